"""Proximal-gradient transforms: the gradient step, then the penalty's prox (exact zeros).

Chained after the optimizer (after ``scale_by_learning_rate``, i.e. at the end
of the chain), they turn the plain step w + u into prox(w + u)::

    tx = optax.chain(optax.sgd(lr), optreg.proximal_lq(lr, weight_decay=1e-3, q=1.0))

For q = 1 this is ISTA (proximal gradient descent) on loss + λ·‖w‖₁: weights
land on exactly 0 and stay there while |∂loss/∂w| < λ. The penalty itself is
:func:`optreg.lq_penalty` (the same λ, the same (λ/q)·Σ|w|^q convention).

``learning_rate`` must be the step size that ``u`` was scaled by: pass the
same float or the same optax schedule object as the optimizer. The transform
keeps its own update count, so the k-th update uses ``schedule(k)`` exactly as
``optax.scale_by_learning_rate`` does. (Wrappers that skip updates, such as
``optax.MultiSteps`` or ``apply_if_finite``, must wrap both to stay in step.)
"""

from __future__ import annotations

from typing import Mapping

import jax
import optax

from optreg._checks import check_exponent
from optreg._elementwise import elementwise_transform
from optreg._hyper import Hyperparameter
from optreg._numerics import compute_dtype
from optreg._tree import Mask
from optreg.prox import prox_elastic_net_unchecked, prox_lq_unchecked


def proximal_lq(
    learning_rate: Hyperparameter,
    weight_decay: Hyperparameter,
    q: float = 1.0,
    mask: Mask = None,
) -> optax.GradientTransformation:
    """Replaces the step w + u by prox_lq(w + u, learning_rate·weight_decay, q).

    The returned updates u' satisfy params + u' = prox_lq(params + u, s, q)
    with s = learning_rate·weight_decay (up to one rounding of the final
    subtraction; exact zeros stay exact). This is the proximal-gradient step
    for the penalty (λ/q)·Σ|w|^q of :func:`optreg.lq_penalty` (q = 0: λ·#{w ≠ 0}).

    Place it last in the chain, after the learning rate has been applied::

        optax.chain(optax.adam(schedule), optreg.proximal_lq(schedule, 1e-4, q=1.0))

    With plain SGD the fixed points are exactly the minimisers (stationary
    points for q < 1) of loss + penalty. With momentum or Adam the result is
    still sparse but the fixed points are those of the preconditioned step.

    Args:
      learning_rate: the step size u was scaled by: float, 0-d array or the
        same optax schedule as the optimizer's (evaluated at this transform's
        own count: the k-th update uses ``schedule(k)``).
      weight_decay: λ >= 0: float, 0-d array or schedule.
      q: exponent >= 0, static (list it in ``static_args`` of
        ``optax.inject_hyperparams``). See :func:`optreg.prox_lq` for the forms.
      mask: optax-style mask: a pytree of bools (or a prefix) or a callable;
        unselected leaves get the plain update u.

    Returns:
      An ``optax.GradientTransformation`` with a :class:`optreg.CountState`;
      ``update`` requires ``params``.

    Raises:
      ValueError, TypeError: at construction for a bad ``q`` or a negative /
        non-scalar hyperparameter; at ``init`` for a mask that does not fit.

    References:
      Parikh & Boyd, "Proximal Algorithms", Foundations and Trends in Optimization, 2014 (§4.2).
      Beck & Teboulle, "A fast iterative shrinkage-thresholding algorithm for linear inverse
      problems", SIAM J. Imaging Sciences, 2009 (ISTA).
    """
    q = check_exponent(q, allow_zero=True)

    def step(update: jax.Array, param: jax.Array, values: Mapping[str, jax.Array]) -> jax.Array:
        compute = compute_dtype(param.dtype)
        weight = param.astype(compute)
        target = weight + update.astype(compute)
        scale = values["learning_rate"] * values["weight_decay"]
        return prox_lq_unchecked(target, scale, q) - weight

    return elementwise_transform(
        "proximal_lq", {"learning_rate": learning_rate, "weight_decay": weight_decay}, step, mask
    )


def proximal_elastic_net(
    learning_rate: Hyperparameter,
    l1: Hyperparameter,
    l2: Hyperparameter,
    mask: Mask = None,
) -> optax.GradientTransformation:
    """Replaces the step w + u by prox_elastic_net(w + u, learning_rate·l1, learning_rate·l2).

    The proximal-gradient step for :func:`optreg.elastic_net_penalty`
    l1·‖w‖₁ + (l2/2)·‖w‖². In sklearn's ``ElasticNet(alpha, l1_ratio)`` terms
    (data term ‖y − Xw‖²/(2n)): ``l1 = alpha·l1_ratio``, ``l2 = alpha·(1 − l1_ratio)``.

    Args:
      learning_rate: the step size u was scaled by (float, 0-d array or the
        optimizer's schedule, kept in step by an internal count).
      l1: L1 strength >= 0 (float, 0-d array or schedule).
      l2: L2 strength >= 0 (float, 0-d array or schedule).
      mask: optax-style mask; unselected leaves get the plain update u.

    Returns:
      An ``optax.GradientTransformation`` with a :class:`optreg.CountState`;
      ``update`` requires ``params``.

    References:
      Zou & Hastie, "Regularization and variable selection via the elastic net", JRSS-B 2005.
      Parikh & Boyd, "Proximal Algorithms", 2014 (§6.5.3).
    """

    def step(update: jax.Array, param: jax.Array, values: Mapping[str, jax.Array]) -> jax.Array:
        compute = compute_dtype(param.dtype)
        weight = param.astype(compute)
        target = weight + update.astype(compute)
        rate = values["learning_rate"]
        return prox_elastic_net_unchecked(target, rate * values["l1"], rate * values["l2"]) - weight

    return elementwise_transform(
        "proximal_elastic_net", {"learning_rate": learning_rate, "l1": l1, "l2": l2}, step, mask
    )
