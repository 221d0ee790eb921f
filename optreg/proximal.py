"""Deprecated location: the proximal transforms are ``optreg.proximal_lq`` and ``optreg.proximal_elastic_net``."""

from __future__ import annotations

import warnings
from typing import Any

from optreg import _proximal

_MOVED = ("proximal_lq", "proximal_elastic_net")


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        warnings.warn(f"optreg.proximal.{name} moved to optreg.{name}; the module optreg.proximal will be removed.",
                      DeprecationWarning, stacklevel=2)
        return getattr(_proximal, name)
    raise AttributeError(f"module 'optreg.proximal' has no attribute {name!r}")
