"""Deprecated module: its names moved in optreg 0.2 (see the warning each one gives)."""

from optreg._deprecated import forwarder

__getattr__ = forwarder("optreg.proximal", {
    "proximal_lq": "optreg.proximal_lq",
    "proximal_elastic_net": "optreg.proximal_elastic_net",
})
