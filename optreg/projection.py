"""Deprecated location: ``optreg.projections.projection_lq_ball`` and ``optreg.project_lq_ball``."""

from __future__ import annotations

import warnings
from typing import Any

from optreg import _project

_MOVED = {"projection_lq_ball": "optreg.projections.projection_lq_ball", "project_lq_ball": "optreg.project_lq_ball"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        warnings.warn(f"optreg.projection.{name} moved to {_MOVED[name]}; the module optreg.projection will be "
                      "removed.", DeprecationWarning, stacklevel=2)
        return getattr(_project, name)
    raise AttributeError(f"module 'optreg.projection' has no attribute {name!r}")
