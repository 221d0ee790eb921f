"""Elastic net: l1·‖w‖₁ + (l2/2)·‖w‖², penalty and transform (seed 003)."""

from __future__ import annotations

from typing import Any, Mapping

import jax
import optax

from optreg._elementwise import elementwise_transform
from optreg._hyper import Hyperparameter
from optreg._tree import Mask
from optreg.decay import check_penalty_strength, lq_gradient, lq_penalty


def elastic_net_penalty(params: Any, l1: Any = 0.0, l2: Any = 0.0, mask: Mask = None) -> jax.Array:
    """Ω(w) = l1·Σ|w| + (l2/2)·Σw² over the (masked) floating leaves.

    In sklearn's ``ElasticNet(alpha, l1_ratio)`` terms (data term ‖y − Xw‖²/(2n)),
    ``l1 = alpha·l1_ratio`` and ``l2 = alpha·(1 − l1_ratio)``.

    References:
      Zou & Hastie, "Regularization and variable selection via the elastic net", JRSS-B 2005.
    """
    check_penalty_strength(l1, "l1")
    check_penalty_strength(l2, "l2")
    return lq_penalty(params, 1.0, l1, mask) + lq_penalty(params, 2.0, l2, mask)


def add_elastic_net(
    l1: Hyperparameter = 0.0, l2: Hyperparameter = 0.0, mask: Mask = None
) -> optax.GradientTransformation:
    """Adds l1·sign(w) + l2·w, the gradient of :func:`elastic_net_penalty`, to the updates.

    This is the (sub)gradient form: it shrinks weights towards zero but never
    makes them exactly zero. For exact zeros use :func:`optreg.proximal_lq`.

    Args:
      l1: L1 strength >= 0: float, 0-d array or optax schedule.
      l2: L2 strength >= 0: float, 0-d array or optax schedule.
      mask: optax-style mask (pytree of bools or callable).

    Returns:
      An ``optax.GradientTransformation`` with ``CountState``; ``update`` requires ``params``.

    References:
      Zou & Hastie, "Regularization and variable selection via the elastic net", JRSS-B 2005.
    """

    def add(update: jax.Array, weight: jax.Array, values: Mapping[str, jax.Array]) -> jax.Array:
        gradient = lq_gradient(weight, values["l1"], 1.0) + lq_gradient(weight, values["l2"], 2.0)
        return update + gradient.astype(update.dtype)

    return elementwise_transform("add_elastic_net", {"l1": l1, "l2": l2}, add, mask)
