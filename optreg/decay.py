"""Lq weight decay: the penalty (λ/q)·Σ|w|^q and the transform adding its gradient.

q = 2 is classic weight decay / L2 (seed 000, seed 001), q = 1 is L1 (seed
003), and any q > 0 is the generalisation Ω(w) = λ_s/2·Σ|w|^q of seed 000 §2.2
written in optreg's one convention (λ = q·λ_s/2).

Coupled or decoupled is placement in the chain, never a flag::

    coupled   (Adam + L2): optax.chain(add_decayed_weights_q(λ, q), optax.adam(lr))
    decoupled (AdamW):     optax.chain(optax.scale_by_adam(), add_decayed_weights_q(λ, q),
                                       optax.scale_by_learning_rate(lr))
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from optreg import _tree
from optreg._checks import check_exponent, check_positive
from optreg._elementwise import elementwise_transform
from optreg._hyper import Hyperparameter, check_hyperparameter
from optreg._numerics import compute_dtype, reciprocal_sqrt
from optreg._tree import Mask

#: Default floor on |w| when evaluating |w|^(q-1) for q < 1 (see :func:`lq_gradient`).
DEFAULT_EPS = 1e-8


def check_penalty_strength(value: Any, name: str) -> None:
    """A penalty's λ: a number or 0-d array >= 0 (a schedule must be evaluated first)."""
    if callable(value):
        raise TypeError(f"{name} of a penalty must be a number or 0-d array; evaluate a schedule first: "
                        f"{name}=schedule(step).")
    check_hyperparameter(value, name)


def lq_penalty(params: Any, q: float = 2.0, weight_decay: Any = 1.0, mask: Mask = None) -> jax.Array:
    """The Lq penalty Ω(w) = (λ/q)·Σ|w|^q over the (masked) floating leaves.

    This is the loss-side form of :func:`add_decayed_weights_q`: adding it to a
    loss and differentiating gives the same update the transform adds.

    Args:
      params: any pytree of arrays.
      q: exponent, q > 0.
      weight_decay: λ >= 0 (float or 0-d array).
      mask: optax-style mask (pytree of bools or callable); masked-out leaves
        contribute nothing.

    Returns:
      A float32 (or float64) scalar.

    References:
      Goodfellow, Bengio, Courville, *Deep Learning*, §7.1 (parameter norm penalties), 2016.
    """
    q = check_exponent(q)
    check_penalty_strength(weight_decay, "weight_decay")
    _tree.check_real(params)
    selected = _tree.resolve_mask(mask, params)
    total = jnp.zeros([], jnp.float32)
    for leaf, chosen in zip(jax.tree.leaves(params), selected, strict=True):
        if chosen and _tree.is_floating(leaf):
            leaf = jnp.asarray(leaf)
            magnitude = jnp.abs(leaf.astype(compute_dtype(leaf.dtype)))
            total = total + jnp.sum(magnitude**q)
    return jnp.asarray(weight_decay) / q * total


def lq_gradient(params: jax.Array, weight_decay: Any, q: float, eps: float = DEFAULT_EPS) -> jax.Array:
    """∂/∂w of (λ/q)·Σ|w|^q, elementwise: λ·sign(w)·|w|^(q−1), made safe.

    * At w = 0 the value is 0 for every q (the subgradient of smallest norm for
      q = 1; for q < 1 the true derivative is unbounded there).
    * For q < 1, |w|^(q−1) is evaluated at max(|w|, eps), so the result is
      bounded by λ·eps^(q−1) and is additionally clipped to the dtype's largest
      finite value: never inf, never NaN. Use :func:`optreg.proximal_lq` when
      you want exact zeros rather than a large pull towards them.
    * For q >= 1 the result overflows only where the true value exceeds the dtype.
    * Subnormal weights may be flushed to zero by XLA on CPU, and then count as 0.
    * λ = 0 gives exactly 0 (no 0·inf).

    Half-precision inputs are computed in float32 and cast back.

    Args:
      params: array of weights w.
      weight_decay: λ >= 0 (scalar).
      q: exponent, a static Python float > 0.
      eps: floor on |w| for q < 1.

    Returns:
      Array with the dtype and shape of ``params``.
    """
    params = jnp.asarray(params)
    dtype = params.dtype
    w = params.astype(compute_dtype(dtype))  # half precision: λ·w in float32 (λ = 1e-8 is 0 in fp16)
    if q == 2.0:
        return (weight_decay * w).astype(dtype)
    if q == 1.0:
        return (weight_decay * jnp.sign(w)).astype(dtype)
    magnitude = jnp.abs(w)
    if q == 1.5:
        power = jnp.where(magnitude > 0, magnitude * reciprocal_sqrt(magnitude), 0.0)
    elif q == 3.0:
        power = magnitude * magnitude
    elif q == 4.0:
        power = magnitude * magnitude * magnitude
    elif q > 1.0:
        power = magnitude ** (q - 1.0)
    else:
        floored = jnp.maximum(magnitude, jnp.asarray(eps, w.dtype))
        power = reciprocal_sqrt(floored) if q == 0.5 else floored ** (q - 1.0)
    scaled = jnp.where(weight_decay == 0, 0.0, weight_decay * power)
    if q > 2.0:
        # |w|^(q−1) overflows before λ < 1 scales it back (bf16 w = 1.8e19, q = 3, λ = 1e-8):
        # there, use (λ^(1/(q−1))·|w|)^(q−1), which overflows only where the true value does.
        rescaled = (jnp.asarray(weight_decay, w.dtype) ** (1.0 / (q - 1.0)) * magnitude) ** (q - 1.0)
        scaled = jnp.where(jnp.isfinite(power), scaled, rescaled)
    if q < 1.0:
        scaled = jnp.minimum(scaled, jnp.finfo(dtype).max)
    return (jnp.sign(w) * scaled).astype(dtype)


def add_decayed_weights_q(
    weight_decay: Hyperparameter = 0.0,
    q: float = 2.0,
    mask: Mask = None,
    eps: float = DEFAULT_EPS,
) -> optax.GradientTransformation:
    """Adds λ·sign(w)·|w|^(q−1), the gradient of (λ/q)·Σ|w|^q, to the updates.

    With ``q = 2`` this is ``optax.add_decayed_weights(λ)``. Chained *before*
    an optimizer it is a coupled penalty (Adam + L2, PyTorch ``weight_decay``);
    chained between ``optax.scale_by_adam()`` and
    ``optax.scale_by_learning_rate(lr)`` it is decoupled (AdamW).

    Args:
      weight_decay: λ >= 0: a float, a 0-d array, or an optax schedule of the
        step count (the k-th update uses ``schedule(k)``). Works as an injected
        hyperparameter in ``optax.inject_hyperparams(add_decayed_weights_q,
        static_args=("q",))``.
      q: exponent q > 0 (static). See :func:`lq_gradient` for the behaviour of
        q <= 1 at and near zero.
      mask: like optax: a pytree of bools with the params' structure (or a
        prefix), or a callable ``params -> pytree``; e.g. :func:`optreg.decay_mask`.
        With ``inject_hyperparams``, a callable mask must be listed in ``static_args``.
      eps: floor on |w| for q < 1 (bounds the derivative; see :func:`lq_gradient`).

    Returns:
      An ``optax.GradientTransformation`` whose state is a :class:`CountState`.
      ``update`` requires ``params``.

    Raises:
      ValueError, TypeError: at construction for q <= 0, non-number q, negative /
        NaN / inf λ, non-scalar λ; at ``init`` for a mask that does not fit the params.

    References:
      Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
      Frank & Friedman, "A statistical view of some chemometrics regression tools", 1993 (bridge / Lq penalties).
    """
    q = check_exponent(q)
    check_positive(eps, "eps")
    return elementwise_transform(
        "add_decayed_weights_q",
        {"weight_decay": weight_decay},
        lambda u, w, values: u + lq_gradient(w, values["weight_decay"], q, eps).astype(u.dtype),
        mask,
    )
