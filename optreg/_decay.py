"""Lq weight decay: the penalty (λ/q)·Σ|w|^q and the transform adding its gradient.

q = 2 is classic weight decay / L2 (Krogh & Hertz 1992; Zhang et al., *Dive into
Deep Learning* §3.7), q = 1 is L1 (Tibshirani 1996), and any q > 0 is the
general regularizer λ_s/2·Σ|w|^q of Bishop & Bishop (2024, §9.2) written in
optreg's one convention (λ = q·λ_s/2).

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

from optreg import _hyper, _tree
from optreg._checks import check_exponent, check_positive
from optreg._elementwise import elementwise_transform
from optreg._hyper import Hyperparameter
from optreg._numerics import compute_dtype, reciprocal_sqrt
from optreg._tree import Mask

#: Default floor on |w| when evaluating |w|^(q-1) for q < 1 (see :func:`lq_gradient`).
DEFAULT_EPS = 1e-8


def safe_power_sum(leaf: jax.Array, q: float) -> jax.Array:
    """Σ|w|^q in the compute dtype, with derivative 0 (not NaN) at w = 0 for every q."""
    magnitude = jnp.abs(leaf.astype(compute_dtype(leaf.dtype)))
    if q == 2.0:
        return jnp.sum(magnitude * magnitude)
    nonzero = magnitude > 0
    return jnp.sum(jnp.where(nonzero, jnp.where(nonzero, magnitude, 1.0) ** q, 0.0))


def lq_penalty(
    params: Any,
    weight_decay: Hyperparameter = 0.0,
    q: float = 2.0,
    *,
    mask: Mask = None,
    count: Any = 0,
) -> jax.Array:
    """The Lq penalty Ω(w) = (λ/q)·Σ|w|^q over the (masked) floating leaves.

    The loss-side form of :func:`add_decayed_weights_q`, with its signature and
    ``params`` in front: adding it to a loss and differentiating gives the
    update the transform adds (for q < 1 the transform floors |w| at ``eps``;
    at w = 0 both give 0).

    Args:
      params: any pytree of arrays.
      weight_decay: λ >= 0: a float, a 0-d array or an optax schedule
        (evaluated at ``count``).
      q: exponent q > 0 (static).
      mask: optax-style mask (pytree of bools, or a function of the params);
        masked-out leaves contribute nothing.
      count: the step at which a schedule ``weight_decay`` is evaluated (the
        transform's k-th update uses ``schedule(k)``).

    Returns:
      A scalar in the params' compute dtype (float32, or float64 under x64).

    Example:
      >>> import jax.numpy as jnp, optreg
      >>> float(optreg.lq_penalty({"w": jnp.array([3.0, -4.0])}, weight_decay=0.1, q=2.0))
      1.25

    References:
      Goodfellow, Bengio & Courville, *Deep Learning*, MIT Press 2016, §7.1 (parameter norm penalties).
      Bishop & Bishop, *Deep Learning: Foundations and Concepts*, Springer 2024, §9.2 (Σ|w|^q regularizers).
    """
    q = check_exponent(q)
    _hyper.check_hyperparameter(weight_decay, "weight_decay")
    _tree.check_real(params)
    selected = _tree.resolve_mask(mask, params)
    total = jnp.zeros([], jnp.float32)
    for leaf, chosen in zip(jax.tree.leaves(params), selected, strict=True):
        if chosen and _tree.is_floating(leaf):
            total = total + safe_power_sum(jnp.asarray(leaf), q)
    return _hyper.penalty_value(weight_decay, count).astype(total.dtype) / q * total


def lq_gradient(params: Any, weight_decay: Any, q: float = 2.0, *, eps: float = DEFAULT_EPS) -> jax.Array:
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

    Example:
      >>> import jax.numpy as jnp, optreg
      >>> [round(g, 4) for g in optreg.lq_gradient(jnp.array([-2.0, 0.0, 4.0]), 0.5, q=1.5).tolist()]
      [-0.7071, 0.0, 1.0]

    References:
      Bishop & Bishop, *Deep Learning: Foundations and Concepts*, Springer 2024, §9.2.
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
    *,
    mask: Mask = None,
    eps: float = DEFAULT_EPS,
) -> optax.GradientTransformation:
    """Adds λ·sign(w)·|w|^(q−1), the gradient of (λ/q)·Σ|w|^q, to the updates.

    With ``q = 2`` this is ``optax.add_decayed_weights(λ)`` on floating leaves;
    non-floating ones (a step counter kept in the params) get no decay and keep
    their dtype, where optax's would add λ·w to them as floats. Chained *before*
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

    Example:
      >>> import jax.numpy as jnp, optax, optreg
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> tx = optax.chain(optreg.add_decayed_weights_q(0.1, q=2.0), optax.sgd(1.0))
      >>> updates, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
      >>> updates["w"].tolist()  # −lr·λ·w
      [-0.10000000149011612, 0.20000000298023224]

    References:
      Krogh & Hertz, "A simple weight decay can improve generalization", NeurIPS 1992.
      Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
      Frank & Friedman, "A statistical view of some chemometrics regression tools", 1993 (bridge / Lq penalties).
    """
    q = check_exponent(q)
    check_positive(eps, "eps")
    return elementwise_transform(
        "add_decayed_weights_q",
        {"weight_decay": weight_decay},
        lambda u, w, values: u + lq_gradient(w, values["weight_decay"], q, eps=eps).astype(u.dtype),
        mask,
    )
