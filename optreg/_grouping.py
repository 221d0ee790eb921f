"""Groups of entries that share one norm: the group lasso's groups and the Lq balls' slices.

A grouping is a list of arrays and an ``axis``:

* ``axis=None``: all entries of all the arrays form one group (a whole-tree
  norm, as optax's projections take it);
* ``axis`` an int or a tuple: exactly one array, and every slice over those
  axes is a group (numpy's ``axis``: the axes reduced within one group, e.g.
  ``axis=0`` of a Dense kernel of shape (in, out) is one group per output
  unit, ``axis=(0, 1, 2)`` of a conv kernel one group per output channel).

Per-group values have the keepdims shape, so they broadcast against the array.
"""

from __future__ import annotations

import functools
import math
from functools import reduce
from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

Axis = Optional[Union[int, tuple[int, ...]]]


def check_axis(axis: Any, name: str = "axis") -> Axis:
    """``None``, an int or a tuple of ints (a list becomes a tuple); anything else is a ``TypeError``."""
    if axis is None or (isinstance(axis, (int, np.integer)) and not isinstance(axis, bool)):
        return None if axis is None else int(axis)
    if isinstance(axis, (tuple, list)) and all(
        isinstance(item, (int, np.integer)) and not isinstance(item, bool) for item in axis
    ):
        return tuple(int(item) for item in axis)
    raise TypeError(
        f"{name} must be None, an int or a tuple of ints (the axes reduced within one group), got {axis!r}."
    )


def normalized_axes(axis: Axis, shape: tuple[int, ...], where: str = "", name: str = "axis") -> tuple[int, ...]:
    """``axis`` as sorted non-negative axes of an array of ``shape``; a ``ValueError`` names both if they do not fit."""
    ndim = len(shape)
    items = (axis,) if isinstance(axis, int) else tuple(axis or ())
    if any(not -ndim <= item < ndim for item in items) or len({item % max(ndim, 1) for item in items}) != len(items):
        place = f" of the leaf {where!r}" if where else ""
        raise ValueError(
            f"{name}={axis!r} does not fit the shape {shape}{place}: each axis must be in [{-ndim}, {ndim}) and "
            f"appear once. Choose the axes reduced within one group for this shape, or mask the leaf out."
        )
    return tuple(sorted(item % ndim for item in items))


def group_sum(arrays: Sequence[jax.Array], axis: Axis) -> jax.Array:
    """Σ over each group (a scalar for ``axis=None``, the keepdims shape otherwise)."""
    if axis is None:
        return reduce(jnp.add, [jnp.sum(a) for a in arrays])
    (x,) = arrays
    return jnp.sum(x, axis=axis, keepdims=True)


def group_max(arrays: Sequence[jax.Array], axis: Axis) -> jax.Array:
    """max over each group of nonnegative values (0 for an empty group)."""
    if axis is None:
        return reduce(jnp.maximum, [jnp.max(a, initial=0.0) for a in arrays])
    (x,) = arrays
    return jnp.max(x, axis=axis, keepdims=True, initial=0.0)


def group_size(arrays: Sequence[jax.Array], axis: Axis) -> int:
    """The number of entries in one group."""
    if axis is None:
        return sum(int(a.size) for a in arrays)
    (x,) = arrays
    axes = normalized_axes(axis, x.shape)
    return math.prod(x.shape[i] for i in axes)


def _combine(a: tuple[jax.Array, jax.Array], b: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """(s, t) pairs standing for s·√t: the larger scale is kept, the other sum rescaled to it."""
    scale = jnp.maximum(a[0], b[0])
    safe = jnp.where(scale > 0, scale, 1.0)
    return scale, a[1] * jnp.square(a[0] / safe) + b[1] * jnp.square(b[0] / safe)


def _scaled_squares_one(x: jax.Array, axis: Axis) -> tuple[jax.Array, jax.Array]:
    axes = tuple(range(x.ndim)) if axis is None else normalized_axes(axis, x.shape)
    magnitude = jnp.abs(x)
    zero = jnp.zeros((), x.dtype)
    scale, total = jax.lax.reduce((magnitude, jnp.ones_like(magnitude)), (zero, zero), _combine, axes)
    if axis is not None:
        scale, total = jnp.expand_dims(scale, axes), jnp.expand_dims(total, axes)
    return scale, total


def scaled_squares(arrays: Sequence[jax.Array], axis: Axis) -> tuple[jax.Array, jax.Array]:
    """(s, t) per group with Σx² = s²·t, s = max|x|, in one pass that neither overflows nor underflows.

    Every entry starts as the pair (|x|, 1) and pairs merge by :func:`_combine`,
    the scaling of LAPACK's ``xNRM2``, in one variadic reduction: no scaled
    copy of ``x`` is written. No derivative is taken through it (the callers
    carry custom JVPs).

    References:
      Blue, "A portable Fortran program to find the Euclidean norm of a vector", ACM TOMS 4(1), 1978.
    """
    return reduce(_combine, [_scaled_squares_one(x, axis) for x in arrays])


def norm_pair(
    arrays: Sequence[jax.Array],
    axis: Axis,
    floor: jax.Array,
    finish: Optional[Callable[[jax.Array, jax.Array], Any]] = None,
) -> Any:
    """(s, ρ) per group with ‖x_g‖₂ = s·ρ, exact wherever ‖x_g‖₂ > ``floor``; or ``finish(s, ρ)``.

    The plain sum of squares (one fused pass, nothing written) serves when,
    for every group, it is finite and either far above the smallest normal
    number (n·tiny/eps: squares flushed to zero cannot matter) or clearly at
    most ``floor``² (then the group's norm is <= floor whatever the flushed
    squares were, and the callers need no more). Otherwise a ``lax.cond``
    takes :func:`scaled_squares`, exact over the whole float range. Only
    per-group values cross the ``cond``, so no parameter-sized buffer is
    written by either branch. ``s·ρ`` itself may overflow (ρ is at most √n).

    ``finish`` (per-group values -> per-group values) runs inside both
    branches: XLA does not fuse across a ``cond``, so what it computes is
    computed once per group, not again for every weight of the loop that
    broadcasts it (XLA:CPU otherwise fuses cheap per-group arithmetic into
    that loop: 60 integer operations per weight for the exponent splitting of
    the per-unit L2 ball).
    """
    finish = finish or (lambda scale, root: (scale, root))
    squares = group_sum([jnp.square(x) for x in arrays], axis)
    info = jnp.finfo(squares.dtype)
    size = max(group_size(arrays, axis), 1)
    flushed = size * float(info.tiny)
    high = squares >= flushed / float(info.eps)
    low = squares + flushed <= jnp.square(floor.astype(squares.dtype)) * (1.0 - 4.0 * float(info.eps))
    ordinary = jnp.all(jnp.isfinite(squares) & (high | low))
    one = jnp.ones_like(squares)

    def plain(_: Any) -> Any:
        return finish(one, jnp.sqrt(squares))

    def scaled(values: Sequence[jax.Array]) -> Any:
        scale, total = scaled_squares(values, axis)
        return finish(jnp.broadcast_to(scale, squares.shape), jnp.sqrt(jnp.broadcast_to(total, squares.shape)))

    return jax.lax.cond(ordinary, plain, scaled, list(arrays))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def group_norm(arrays: list[jax.Array], axis: Axis) -> jax.Array:
    """‖x_g‖₂ per group, exact over the whole float range; its derivative is Σ x̂·dx, x̂ = x/‖x_g‖ (0 at x_g = 0)."""
    scale, root = norm_pair(arrays, axis, jnp.zeros([], jnp.result_type(*arrays)))
    return scale * root


@group_norm.defjvp
def _group_norm_jvp(axis: Axis, primals: tuple[list[jax.Array]], tangents: tuple[list[jax.Array]]) -> tuple[
    jax.Array, jax.Array
]:
    (arrays,), (d_arrays,) = primals, tangents
    norm = group_norm(arrays, axis)
    positive = norm > 0
    safe = jnp.where(positive, norm, 1.0)
    return norm, group_sum([jnp.where(positive, x / safe, 0.0) * d for x, d in zip(arrays, d_arrays)], axis)
