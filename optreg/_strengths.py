"""Strengths of the pytree prox operators: one number for every leaf, or a pytree of them (as jaxopt).

A strength (``scale``, ``l1_scale``, ``l2_scale``, ...) is either one value
shared by every leaf of ``x`` (a number or an array that is a leaf to JAX), or
a pytree with ``x``'s structure (or a prefix of it: a value then serves the
whole subtree under it). Each value must broadcast against the shape it acts
on without changing it: the leaf's shape for elementwise operators, the
per-group (keepdims) shape for the group lasso. Anything else is a
``ValueError`` naming the argument, the leaf and both shapes; concrete
negative, NaN or infinite values are a ``ValueError`` too. Traced values are
never branched on: at run time a negative value is clipped to 0 by the
operators (:func:`clip_negative`).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from optreg import _tree
from optreg._checks import check_nonnegative


def check_strength_value(value: Any, name: str) -> None:
    """A concrete value must be finite and >= 0; a callable (e.g. a schedule) is a ``TypeError`` here."""
    if callable(value) and jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(value)):
        raise TypeError(
            f"{name} must be a number, an array or a pytree of them, got the callable {value!r}. "
            f"An operator takes values; evaluate a schedule first ({name}=schedule(step)), or use a transform."
        )
    dtype = getattr(value, "dtype", None)
    if dtype is not None and not isinstance(value, jax.core.Tracer) and jnp.issubdtype(dtype, jnp.floating):
        value = np.asarray(value, np.float64)  # bfloat16/float16 arrays: numpy's issubdtype does not see them as floats
    check_nonnegative(value, name)


def check_scaling(scaling: Any, strengths: str) -> None:
    """jaxopt's ``scaling``: one finite number >= 0 (per-leaf or per-entry values belong in ``strengths``)."""
    check_strength_value(scaling, "scaling")
    if jnp.ndim(scaling) != 0:
        raise ValueError(f"scaling must be one number, got shape {jnp.shape(scaling)}; put per-leaf or per-entry "
                         f"strengths in {strengths}.")


def clip_negative(value: jax.Array) -> jax.Array:
    """value where it is >= 0, else 0 (a runtime negative strength acts as 0; NaN stays NaN).

    ``where`` rather than ``maximum``: at 0 the derivative is the right-hand one (1), not ``maximum``'s ½.
    """
    return jnp.where(value < 0, jnp.zeros_like(value), value)


def _is_leaf(value: Any) -> bool:
    return jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(value)) and value is not None


def per_leaf(
    strength: Any,
    x: Any,
    name: str,
    target_shape: Optional[Callable[[Any, str], tuple[int, ...]]] = None,
    target: str = "x's leaf",
) -> list[Any]:
    """One strength per leaf of ``x`` (``jax.tree.leaves`` order), checked against each leaf's shape.

    Args:
      strength: one value for all leaves, or a pytree with ``x``'s structure (or a prefix of it).
      x: the operator's input pytree.
      name: the argument's name, for error messages.
      target_shape: ``(leaf, path) -> shape`` the strength must broadcast to without changing
        it; the leaf's own shape by default.
      target: what that shape is, for error messages.

    Returns:
      A list with one strength per leaf of ``x`` (``None`` for non-floating leaves).
    """
    flat, treedef_ = jax.tree_util.tree_flatten_with_path(x)
    treedef: Any = treedef_  # jax's PyTreeDef is untyped for mypy
    if _is_leaf(strength):
        values = [strength] * len(flat)
    else:
        try:
            values = _tree.broadcast_prefix(strength, x)
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"{name} must be one number or array for every leaf, or a pytree with x's structure (or a "
                f"prefix of it) whose leaves broadcast against x's leaves. {name}: "
                f"{jax.tree_util.tree_structure(strength)}; x: {treedef}."
            ) from error
    result: list[Any] = []
    for (path, leaf), value in zip(flat, values, strict=True):
        if not _tree.is_floating(leaf):
            result.append(None)
            continue
        where = _tree.path_to_string(path)
        label = f"{name} at {where!r}" if where else name
        check_strength_value(value, label)
        shape = tuple(np.shape(leaf)) if target_shape is None else target_shape(leaf, where)
        value_shape = tuple(np.shape(value))
        try:
            fits = np.broadcast_shapes(shape, value_shape) == shape
        except ValueError:
            fits = False
        if not fits:
            place = f" {where!r}" if where else ""
            raise ValueError(
                f"{label} has shape {value_shape}, which does not broadcast against {target}{place} of shape "
                f"{shape} without changing it. Pass a number, or an array whose shape broadcasts to {shape}."
            )
        result.append(value)
    return result
