"""Deprecated module: its names moved in optreg 0.2 (see the warning each one gives)."""

from optreg._deprecated import forwarder

__getattr__ = forwarder("optreg.masks", {
    "decay_mask": "optreg.decay_mask",
})
