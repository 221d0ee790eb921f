"""Elastic net: l1·‖w‖₁ + (l2/2)·‖w‖², penalty and transform."""

from __future__ import annotations

from typing import Any, Mapping

import jax
import optax

from optreg import _hyper
from optreg._decay import lq_gradient, lq_penalty
from optreg._elementwise import elementwise_transform
from optreg._hyper import Hyperparameter
from optreg._tree import Mask


def elastic_net_penalty(
    params: Any, l1: Hyperparameter = 0.0, l2: Hyperparameter = 0.0, *, mask: Mask = None, count: Any = 0
) -> jax.Array:
    """Ω(w) = l1·Σ|w| + (l2/2)·Σw² over the (masked) floating leaves: the loss-side form of :func:`add_elastic_net`.

    In sklearn's ``ElasticNet(alpha, l1_ratio)`` terms (data term ‖y − Xw‖²/(2n)),
    ``l1 = alpha·l1_ratio`` and ``l2 = alpha·(1 − l1_ratio)``; Keras'
    ``L1L2(l1, l2)`` is ``l1 = l1``, ``l2 = 2·l2`` (Keras has no ½).

    Args:
      params: any pytree of arrays.
      l1: L1 strength >= 0: float, 0-d array or schedule (evaluated at ``count``).
      l2: L2 strength >= 0: float, 0-d array or schedule (evaluated at ``count``).
      mask: optax-style mask.
      count: the step at which schedules are evaluated.

    Returns:
      A scalar.

    Example:
      >>> import jax.numpy as jnp, optreg
      >>> round(float(optreg.elastic_net_penalty({"w": jnp.array([3.0, -4.0])}, l1=0.1, l2=0.2)), 4)
      3.2

    References:
      Zou & Hastie, "Regularization and variable selection via the elastic net", JRSS-B 2005.
    """
    _hyper.check_hyperparameter(l1, "l1")
    _hyper.check_hyperparameter(l2, "l2")
    return lq_penalty(params, l1, 1.0, mask=mask, count=count) + lq_penalty(params, l2, 2.0, mask=mask, count=count)


def add_elastic_net(
    l1: Hyperparameter = 0.0, l2: Hyperparameter = 0.0, *, mask: Mask = None
) -> optax.GradientTransformation:
    """Adds l1·sign(w) + l2·w, the gradient of :func:`elastic_net_penalty`, to the updates.

    This is the (sub)gradient form: it shrinks weights towards zero but never
    makes them exactly zero. For exact zeros use :func:`optreg.proximal_elastic_net`.

    Args:
      l1: L1 strength >= 0: float, 0-d array or optax schedule.
      l2: L2 strength >= 0: float, 0-d array or optax schedule.
      mask: optax-style mask (pytree of bools or a function of the params).

    Returns:
      An ``optax.GradientTransformation`` with ``CountState``; ``update`` requires ``params``.

    Example:
      >>> import jax.numpy as jnp, optreg
      >>> params = {"w": jnp.array([2.0, -1.0])}
      >>> tx = optreg.add_elastic_net(l1=0.1, l2=0.5)
      >>> updates, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
      >>> [round(v, 4) for v in updates["w"].tolist()]
      [1.1, -0.6]

    References:
      Zou & Hastie, "Regularization and variable selection via the elastic net", JRSS-B 2005.
    """

    def add(update: jax.Array, weight: jax.Array, values: Mapping[str, jax.Array]) -> jax.Array:
        gradient = lq_gradient(weight, values["l1"], 1.0) + lq_gradient(weight, values["l2"], 2.0)
        return update + gradient.astype(update.dtype)

    return elementwise_transform("add_elastic_net", {"l1": l1, "l2": l2}, add, mask)
