"""Forwarding of names that moved in 0.2, with a ``DeprecationWarning`` naming the new spelling."""

from __future__ import annotations

import importlib
import warnings
from typing import Any, Callable


def forwarder(module: str, moved: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__``: ``moved`` maps an old name to the new ``package.module.name`` spelling."""

    def __getattr__(name: str) -> Any:
        if name not in moved:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        new = moved[name]
        warnings.warn(
            f"{module}.{name} moved to {new} in optreg 0.2; the old spelling will be removed.",
            DeprecationWarning,
            stacklevel=2,
        )
        owner, _, attribute = new.rpartition(".")
        return getattr(importlib.import_module(owner), attribute)

    return __getattr__
