"""Deprecated module: its names moved in optreg 0.2 (see the warning each one gives)."""

from optreg._deprecated import forwarder

__getattr__ = forwarder("optreg.decay", {
    "add_decayed_weights_q": "optreg.add_decayed_weights_q",
    "lq_penalty": "optreg.lq_penalty",
    "lq_gradient": "optreg.lq_gradient",
})
