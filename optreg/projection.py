"""Deprecated module: its names moved in optreg 0.2 (see the warning each one gives)."""

from optreg._deprecated import forwarder

__getattr__ = forwarder("optreg.projection", {
    "projection_lq_ball": "optreg.projections.projection_lq_ball",
    "project_lq_ball": "optreg.project_lq_ball",
})
