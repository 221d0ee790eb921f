"""Parameters seen as matrices: a kernel reshaped to (−1, fan_out), the last axis being the output units.

A Flax ``Dense`` kernel (in, out) stays as it is; a ``Conv`` kernel
(kh, kw, in, out) becomes (kh·kw·in, out), as in Yoshida & Miyato (2017).
Channels-first layouts (PyTorch, Equinox: (out, in, kh, kw)) matricize
differently; for 2-D weights the singular values, and so the penalties built
on them, are the same either way.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, PartitionSpec

from optreg._numerics import compute_dtype
from optreg._tree import is_floating

#: Matrix products at full float32 accuracy on every backend (TPUs and GPUs default to bf16/tf32 passes,
#: which WᵀW − I near orthogonality or a power iteration cannot afford).
PRECISION = jax.lax.Precision.HIGHEST


def is_matrix(leaf: Any) -> bool:
    """Whether a leaf is a floating array with ndim >= 2 (the leaves the spectral penalties act on)."""
    return is_floating(leaf) and np.ndim(leaf) >= 2


def as_matrix(x: jax.Array) -> jax.Array:
    """``x`` reshaped to (prod(shape[:-1]), shape[-1]) in its compute dtype (float32 for half precision)."""
    x = jnp.asarray(x)
    return x.reshape(math.prod(x.shape[:-1]), x.shape[-1]).astype(compute_dtype(x.dtype))


def axis_spec(x: jax.Array, axis: int) -> Any:
    """The mesh axis (or None) that ``x``'s ``axis`` is split over, as seen while tracing."""
    spec = tuple(jax.typeof(x).sharding.spec)
    return spec[axis] if axis < len(spec) else None


def matmul(a: jax.Array, b: jax.Array, out_spec: Optional[tuple] = None) -> jax.Array:
    """``a @ b`` at :data:`PRECISION`; ``out_spec`` lays the result out under a mesh with explicit axes.

    A product that contracts over a split dimension is ambiguous to JAX's
    explicit sharding (``jax.make_mesh``'s default axis type): the caller says
    how the result is laid out, e.g. replicated (``(None, None)``) for a Gram
    matrix summed over the split rows, which XLA computes per shard and
    all-reduces. Under automatic sharding XLA propagates the layout itself.
    """
    sharding = jax.typeof(a).sharding
    explicit = any(kind == AxisType.Explicit for kind in getattr(sharding.mesh, "axis_types", ()))
    out_sharding = sharding.update(spec=PartitionSpec(*out_spec)) if explicit and out_spec is not None else None
    return jnp.matmul(a, b, precision=PRECISION, out_sharding=out_sharding)


def scaled(w: jax.Array, *, at_least_one: bool = False) -> tuple[jax.Array, jax.Array]:
    """(w / s, s) with s a power of two near max|w| (so the division is exact), held constant for differentiation.

    Spectral quantities of W (Gram matrices, power iterations) are computed from
    w / s, whose entries are at most 4 in magnitude: squares of huge weights
    (|w| ≈ 1e19 in float32) then never overflow into inf − inf = NaN, and
    squares of tiny ones never underflow to a zero norm. s = 2^e with
    max|w| < 2^e, e clipped to the normal exponents ([−125, 126] in float32, so
    that s is a normal float; with ``at_least_one``, to [0, 126], i.e. s >= 1
    and ordinary weights are left as they are). The scaling is two
    multiplications by powers of two of at most 2^63 each in float32 (one by
    2^−e would be subnormal, flushed to 0 on CPU, beyond e = 126).
    """
    info = jnp.finfo(w.dtype)
    _, exponent = jnp.frexp(jnp.max(jnp.abs(w), initial=0.0))
    exponent = jax.lax.stop_gradient(jnp.clip(exponent, 0 if at_least_one else info.minexp, info.maxexp - 2))
    half = exponent // 2
    one = jnp.ones([], w.dtype)
    return (w * jnp.ldexp(one, -half)) * jnp.ldexp(one, half - exponent), jnp.ldexp(one, exponent)
