"""Cautious weight decay: decoupled Lq decay only where it does not oppose the optimizer's update.

Chen et al. (2025) write the step of an optimizer with cautious weight decay as

    x_{t+1} = x_t − η_t·(u_t + λ·𝕀(u_t ⊙ x_t ≥ 0) ⊙ x_t),

with u_t the optimizer's update direction (for Adam, m̂/(√v̂ + ε)), which points
like the gradient. In an optax chain that direction is exactly what arrives
between ``optax.scale_by_adam()`` and ``optax.scale_by_learning_rate(lr)``:
``scale_by_learning_rate`` multiplies by −η afterwards, so the incoming update
here is the paper's u_t with the paper's sign, and the paper's test carries over
unchanged. Placed after the learning rate the sign would be flipped and the
mask inverted: this transform belongs where decoupled decay goes::

    optax.chain(optax.scale_by_adam(), add_cautious_weight_decay(λ), optax.scale_by_learning_rate(lr))

In optreg's one convention the decay term is λ·sign(w)·|w|^(q−1) (q = 2: λ·w,
the paper's term).
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import optax

from optreg._checks import check_exponent, check_positive
from optreg._decay import DEFAULT_EPS, lq_gradient
from optreg._elementwise import elementwise_transform
from optreg._hyper import Hyperparameter
from optreg._tree import Mask


def _opposed(update: jax.Array, weight: jax.Array) -> jax.Array:
    """Where the update and the weight have strictly opposite signs (u·w < 0).

    Written with comparisons rather than ``u * w < 0``: the product of two tiny
    numbers of opposite signs underflows to −0.0, which does not compare below 0.
    """
    return ((update > 0) & (weight < 0)) | ((update < 0) & (weight > 0))


def add_cautious_weight_decay(
    weight_decay: Hyperparameter,
    q: float = 2.0,
    *,
    mask: Mask = None,
    eps: float = DEFAULT_EPS,
) -> optax.GradientTransformation:
    """Adds λ·sign(w)·|w|^(q−1) where the incoming update u does not oppose the weight (u·w ≥ 0).

    Cautious weight decay (Chen et al. 2025) applies decoupled decay only on
    the coordinates where shrinking the weight goes the same way as the
    optimizer's own step; where the step pushes the weight away from zero
    (u·w < 0), the decay would fight it and is left out. The paper's mask is
    𝕀(u ⊙ w ≥ 0): a coordinate with u = 0 is decayed as in AdamW (nothing to
    fight there); at w = 0 the decay term is 0 anyway.

    Place it like decoupled decay, between the optimizer's scaling and the
    learning rate (the incoming update must point like the gradient)::

        optax.chain(optax.scale_by_adam(), add_cautious_weight_decay(λ), optax.scale_by_learning_rate(lr))

    Not after ``scale_by_learning_rate``: the updates there are negated, so
    the mask would keep exactly the coordinates the paper drops.

    There is no loss-side penalty: the term depends on the optimizer's update.

    Args:
      weight_decay: λ >= 0: a float, a 0-d array, or an optax schedule of the
        step count (the k-th update uses ``schedule(k)``). Works in
        ``optax.inject_hyperparams(add_cautious_weight_decay, static_args=("q",))``.
      q: exponent q > 0 (static); q = 2 is the paper's λ·w.
      mask: like optax: a pytree of bools with the params' structure (or a
        prefix), or a function ``params -> pytree``, e.g. :func:`optreg.decay_mask`.
      eps: floor on |w| for q < 1 (see :func:`optreg.lq_gradient`).

    Returns:
      An ``optax.GradientTransformation`` whose state is a :class:`optreg.CountState`;
      ``update`` requires ``params``.

    Raises:
      ValueError, TypeError: at construction for a negative, NaN, infinite or
        non-scalar λ, or a q that is not a real number > 0.

    Example:
      >>> import jax.numpy as jnp, optax, optreg
      >>> params = {"w": jnp.array([1.0, 1.0, -2.0])}
      >>> updates = {"w": jnp.array([0.5, -0.5, 0.0])}  # agrees, opposes, zero
      >>> tx = optreg.add_cautious_weight_decay(0.1)
      >>> out, _ = tx.update(updates, tx.init(params), params)
      >>> [round(float(x), 3) for x in out["w"]]
      [0.6, -0.5, -0.2]

    References:
      Chen, Li, Liang, Su, Xie, Pierse, Liang, Lao & Liu, "Cautious Weight Decay",
      arXiv:2510.12402, 2025 (Algorithm 1).
      Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
    """
    q = check_exponent(q)
    check_positive(eps, "eps")

    def add(update: jax.Array, weight: jax.Array, values: Mapping[str, jax.Array]) -> jax.Array:
        decay = lq_gradient(weight, values["weight_decay"], q, eps=eps).astype(update.dtype)
        return update + jnp.where(_opposed(update, weight), jnp.zeros_like(decay), decay)

    return elementwise_transform("add_cautious_weight_decay", {"weight_decay": weight_decay}, add, mask)
