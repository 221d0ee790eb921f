"""Deprecated module: its names moved in optreg 0.2 (see the warning each one gives)."""

from optreg._deprecated import forwarder

__getattr__ = forwarder("optreg.per_layer", {
    "per_layer_decay": "optreg.per_layer_decay",
    "per_layer_penalty": "optreg.per_layer_penalty",
    "describe": "optreg.describe",
    "PerLayerDecay": "optreg.PerLayerDecay",
})
