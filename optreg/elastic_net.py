"""Deprecated module: its names moved in optreg 0.2 (see the warning each one gives)."""

from optreg._deprecated import forwarder

__getattr__ = forwarder("optreg.elastic_net", {
    "add_elastic_net": "optreg.add_elastic_net",
    "elastic_net_penalty": "optreg.elastic_net_penalty",
})
