"""Orthogonality decay: the penalty (λ/4)·Σ_layers ‖WᵀW − I‖²_F and the transform adding its gradient λ·W(WᵀW − I).

W is each kernel reshaped to (−1, fan_out) (see :mod:`optreg._matrix`): the
penalty asks its columns, one per output unit, to be orthonormal. Its
gradient, 4·(λ/4)·W(WᵀW − I), equals λ·(WWᵀ − I)W, so it is computed with the
smaller of the two Gram matrices (cost 4·n·m·min(n, m) flops for an n × m
kernel; under FSDP sharding the contraction runs over the split dimension and
needs one all-reduce of a min(n, m)² matrix). Writing ‖WᵀW − I‖² through the
singular values σᵢ of W gives Σᵢ(σᵢ² − 1)² + max(m − n, 0): the penalty drives
every singular value to 1.

Relation to Keras' ``OrthogonalRegularizer(factor, mode)``: Keras L2-normalizes
the rows (``mode="rows"``) or columns (``mode="columns"``) of a rank-2 kernel
and adds ``factor`` times the mean over pairs of the absolute cosine between
them, factor·Σ_{i<j}|n_iᵀn_j| / (k(k−1)/2). That penalty is scale-free (only
directions count; norms are free), an L1 of the off-diagonal entries, and
averaged over pairs. This one is the squared Frobenius form of Brock et al.
(2017, 2019) and Bansal et al. (2018): unnormalized, so it also pulls every
column norm to 1, squared (smooth, zero gradient at the optimum), summed over
layers and entries, and defined for any kernel rank through the reshape.
Keras' ``mode="columns"`` on a Dense kernel (inputs, units) looks at the same
vectors as this penalty (one per output unit).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax

from optreg import _hyper, _tree
from optreg._elementwise import elementwise_transform
from optreg._hyper import Hyperparameter
from optreg._matrix import as_matrix, axis_spec, is_matrix, matmul, scaled
from optreg._tree import Mask


def _gram_minus_identity(w: jax.Array, s: jax.Array) -> jax.Array:
    """The smaller Gram matrix of ŵ = w/s minus I/s²: ŵᵀŵ − I/s² (tall) or ŵŵᵀ − I/s² (wide).

    Computed from the scaled kernel (:func:`optreg._matrix.scaled`, s >= 1) so that huge weights overflow to
    ±inf at the end, never to inf − inf = NaN inside a matrix product; for ordinary weights s = 1.
    """
    rows, columns = w.shape
    gram = matmul(w.T, w, (None, None)) if rows >= columns else matmul(w, w.T, (None, None))  # summed over shards
    return gram - jnp.eye(gram.shape[0], dtype=w.dtype) / (s * s)


def _saturating_product(factor: jax.Array, s: jax.Array, power: int) -> jax.Array:
    """factor·s^power, clipped to the float range at each step: ±inf·0 never happens downstream."""
    largest = jnp.finfo(s.dtype).max
    out = factor.astype(s.dtype)
    for _ in range(power):
        out = jnp.clip(out * s, -largest, largest)
    return out


def orthogonality_gradient(weight: jax.Array, weight_decay: jax.Array) -> jax.Array:
    """λ·W(WᵀW − I) for one kernel (any ndim >= 2; W its (−1, fan_out) reshape), in the kernel's shape and dtype."""
    w, s = scaled(as_matrix(weight), at_least_one=True)
    difference = _gram_minus_identity(w, s)
    layout = (axis_spec(w, 0), axis_spec(w, 1))
    direction = matmul(w, difference, layout) if w.shape[0] >= w.shape[1] else matmul(difference, w, layout)
    return (_saturating_product(jnp.asarray(weight_decay), s, 3) * direction).reshape(weight.shape).astype(weight.dtype)


def _layer_penalty(weight: jax.Array) -> jax.Array:
    """‖WᵀW − I_m‖²_F for one kernel, from the smaller Gram matrix (+ m − n when W is wide)."""
    w, s = scaled(as_matrix(weight), at_least_one=True)
    rows, columns = w.shape
    difference = _gram_minus_identity(w, s)
    s2 = jnp.minimum(s * s, jnp.finfo(s.dtype).max)
    value = jnp.minimum(s2 * s2, jnp.finfo(s.dtype).max) * jnp.sum(difference * difference)
    return value + max(columns - rows, 0)


def orthogonal_penalty(params: Any, weight_decay: Hyperparameter, *, mask: Mask = None, count: Any = 0) -> jax.Array:
    """Ω = (λ/4)·Σ_layers ‖WᵀW − I‖²_F over the (masked) floating leaves with ndim >= 2.

    W is each kernel reshaped to (−1, fan_out); leaves with ndim < 2 (biases,
    scales) contribute nothing. The gradient is λ·W(WᵀW − I), what
    :func:`add_orthogonal_decay` adds.

    Args:
      params: any pytree of arrays.
      weight_decay: λ >= 0: a float, a 0-d array, or an optax schedule (evaluated at ``count``).
      mask: like optax (pytree of bools, a prefix of one, or a function of the params).
      count: the update count at which a schedule is evaluated.

    Returns:
      A float32 (or float64) scalar.

    Example:
      >>> import jax.numpy as jnp, optreg
      >>> params = {"kernel": 2.0 * jnp.eye(3), "bias": jnp.ones(3)}
      >>> float(optreg.orthogonal_penalty(params, 1.0))  # (1/4)·3·(4 − 1)²
      6.75

    References:
      Brock, Lim, Ritchie & Weston, "Neural Photo Editing with Introspective
      Adversarial Networks", ICLR 2017 (orthogonal regularization).
      Brock, Donahue & Simonyan, "Large Scale GAN Training for High Fidelity
      Natural Image Synthesis", ICLR 2019 (β‖WᵀW − I‖²_F).
    """
    _hyper.check_penalty_hyperparameter(weight_decay, "weight_decay")
    _tree.check_real(params)
    selected = _tree.resolve_mask(mask, params)
    total = jnp.zeros([], jnp.float32)
    for leaf, chosen in zip(jax.tree.leaves(params), selected, strict=True):
        if chosen and is_matrix(leaf):
            total = total + _layer_penalty(jnp.asarray(leaf))
    lam = _hyper.penalty_value(weight_decay, count)
    return jnp.where(lam == 0, 0.0, lam / 4 * total)


def add_orthogonal_decay(weight_decay: Hyperparameter, *, mask: Mask = None) -> optax.GradientTransformation:
    """Adds λ·W(WᵀW − I), the gradient of :func:`orthogonal_penalty`, to the updates of every kernel.

    Orthogonal regularization (Brock et al. 2017, 2019): each kernel, reshaped
    to (−1, fan_out), is pulled towards orthonormal columns, i.e. all its
    singular values towards 1. Leaves with ndim < 2 pass through untouched.
    The reshape takes the last axis as the output units (Flax's layouts). Channels-first
    convolution weights (Equinox's and PyTorch's (out, in, kh, kw)) would be paired by kernel
    width: leave them out with ``mask`` (2-D weights in either layout have the same singular
    values, so Equinox ``Linear`` weights are fine).
    Chain it before the optimizer, as a loss term::

        optax.chain(optreg.add_orthogonal_decay(1e-4, mask=optreg.decay_mask), optax.adam(lr))

    Unlike Keras' ``OrthogonalRegularizer`` (a mean absolute cosine between
    normalized rows or columns, blind to their norms) this penalty is the
    squared Frobenius distance of WᵀW from I; see the module notes.

    Cost per kernel of shape n × m: 4·n·m·min(n, m) flops (two products with
    the smaller Gram matrix), at full float32 matrix-product precision.

    Args:
      weight_decay: λ >= 0: a float, a 0-d array, or an optax schedule of the
        step count (the k-th update uses ``schedule(k)``). Required: with 0
        the transform does nothing. Works in ``optax.inject_hyperparams``.
      mask: like optax: a pytree of bools with the params' structure (or a
        prefix), or a function ``params -> pytree``, e.g. :func:`optreg.decay_mask`.

    Returns:
      An ``optax.GradientTransformation`` whose state is a :class:`optreg.CountState`;
      ``update`` requires ``params``.

    Raises:
      ValueError, TypeError: at construction for a negative, NaN, infinite or non-scalar λ.

    Example:
      >>> import jax.numpy as jnp, optreg
      >>> params = {"kernel": 2.0 * jnp.eye(2), "bias": jnp.ones(2)}
      >>> tx = optreg.add_orthogonal_decay(0.1)
      >>> out, _ = tx.update({"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros(2)}, tx.init(params), params)
      >>> out["kernel"].diagonal().tolist(), out["bias"].tolist()  # 0.1·2·(4 − 1)
      ([0.6000000238418579, 0.6000000238418579], [0.0, 0.0])

    References:
      Brock, Lim, Ritchie & Weston, "Neural Photo Editing with Introspective
      Adversarial Networks", ICLR 2017.
      Bansal, Chen & Wang, "Can We Gain More from Orthogonality Regularizations
      in Training Deep CNNs?", NeurIPS 2018.
    """

    def add(update: jax.Array, weight: jax.Array, values: Mapping[str, jax.Array]) -> jax.Array:
        if weight.ndim < 2:
            return update
        return update + orthogonality_gradient(weight, values["weight_decay"]).astype(update.dtype)

    return elementwise_transform("add_orthogonal_decay", {"weight_decay": weight_decay}, add, mask)
