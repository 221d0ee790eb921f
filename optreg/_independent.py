"""Weight decay whose size does not depend on the learning rate: placed last, it subtracts rate_t·sign(w)|w|^(q−1).

In decoupled decay as optax chains it (AdamW), the step is
w ← w − η·(u + λw): the decay is scaled by the learning rate η, so changing η
also changes how strongly weights shrink. Loshchilov & Hutter (2019, §2 and
Algorithm 2) multiply the decay by the schedule multiplier η_t only, not by
the base learning rate α; Wortsman et al. (2023, "independent" decay) make
the point for Transformers: with the decay independent of the learning rate,
the best λ stops moving when the learning rate is tuned. Here the decay is
applied after the learning rate, with its own rate (a number or a schedule,
e.g. the learning rate's schedule divided by its peak, times λ).
"""

from __future__ import annotations

from typing import Mapping

import jax
import optax

from optreg._checks import check_exponent, check_positive
from optreg._decay import DEFAULT_EPS, lq_gradient
from optreg._elementwise import elementwise_transform
from optreg._hyper import Hyperparameter
from optreg._tree import Mask


def independent_weight_decay(
    rate: Hyperparameter,
    q: float = 2.0,
    *,
    mask: Mask = None,
    eps: float = DEFAULT_EPS,
) -> optax.GradientTransformation:
    """Subtracts rate_t·sign(w)·|w|^(q−1) from the final updates: decay that the learning rate does not scale.

    Chain it last, after the learning rate, so that what it subtracts is the
    change of the parameters itself::

        optax.chain(optax.adam(lr), independent_weight_decay(rate))
        # params + u' = params + u − rate_t·w          (q = 2)

    Then the per-step shrink factor is (1 − rate_t) whatever ``lr`` is; with
    AdamW it is (1 − lr_t·λ). To follow the learning-rate schedule's shape
    (Loshchilov & Hutter 2019, η_t·λ with η_t the schedule multiplier), give
    ``rate`` a schedule, e.g. ``lambda k: λ * lr_schedule(k) / peak_lr``.

    rate_t·sign(w)|w|^(q−1) is rate_t times the gradient of (1/q)·Σ|w|^q,
    i.e. of :func:`optreg.lq_penalty` with λ = 1; it has no loss-side form of
    its own, because it is not scaled by the learning rate as a loss term is.

    Args:
      rate: the fraction of sign(w)|w|^(q−1) removed per step, >= 0: a float,
        a 0-d array, or an optax schedule of the step count (the k-th update
        uses ``schedule(k)``). Works in
        ``optax.inject_hyperparams(independent_weight_decay, static_args=("q",))``.
      q: exponent q > 0 (static).
      mask: like optax: a pytree of bools with the params' structure (or a
        prefix), or a function ``params -> pytree``, e.g. :func:`optreg.decay_mask`.
      eps: floor on |w| for q < 1 (see :func:`optreg.lq_gradient`).

    Returns:
      An ``optax.GradientTransformation`` whose state is a :class:`optreg.CountState`;
      ``update`` requires ``params``.

    Raises:
      ValueError, TypeError: at construction for a negative, NaN, infinite or
        non-scalar rate, or a q that is not a real number > 0.

    Example:
      >>> import jax.numpy as jnp, optax, optreg
      >>> params = {"w": jnp.array([2.0, -4.0])}
      >>> tx = optax.chain(optax.sgd(0.5), optreg.independent_weight_decay(0.1))
      >>> out, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
      >>> [round(float(x), 3) for x in out["w"]]
      [-0.2, 0.4]

    References:
      Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019 (§2, Algorithm 2).
      Wortsman et al., "Small-scale proxies for large-scale Transformer training
      instabilities", arXiv:2309.14322, 2023 (independent weight decay).
    """
    q = check_exponent(q)
    check_positive(eps, "eps")

    def subtract(update: jax.Array, weight: jax.Array, values: Mapping[str, jax.Array]) -> jax.Array:
        return update - lq_gradient(weight, values["rate"], q, eps=eps).astype(update.dtype)

    return elementwise_transform("independent_weight_decay", {"rate": rate}, subtract, mask)
