"""The Gaussian-mixture prior of soft weight sharing: its state, hyperpriors and math, written once.

The prior is p(w) = Σ_j π_j N(w | μ_j, 1/λ_j) on every weight. With
ℓ_j(w) = log π_j + log N(w | μ_j, 1/λ_j) the responsibilities are
r_j(w) = softmax_j ℓ_j(w) and

    −d log p(w)/dw = Σ_j r_j(w) λ_j (w − μ_j).

Everything here is elementwise in the weights, finite for finite input (the
squared distance λ(w − μ)² is capped), and computed in float32 (float64 for
float64 weights; but the mixture's parameters, τ and the fast mode's table are
float32, so float64 weights get float32-accurate gradients).

References:
  Nowlan & Hinton, "Simplifying neural networks by soft weight-sharing", Neural Computation 1992.
  Ullrich, Meeds & Welling, "Soft weight-sharing for neural network compression", ICLR 2017.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from optreg._checks import is_concrete_number
from optreg._numerics import compute_dtype

#: Bounds on log λ_j, a last guard for extreme inputs (σ between 4.5e-5 and 2.2e4).
LOG_PRECISION_BOUNDS = (-20.0, 20.0)

_LOG_2PI = math.log(2.0 * math.pi)
#: Cap on λ(w − μ)²: keeps every log-density finite.
BIG = 1e30
MAX = float(np.finfo(np.float32).max)

Pair = tuple[float, float]


class MixtureParams(NamedTuple):
    """The mixture's learned parameters: the pytree the mixture's optimizer updates.

    Label it for ``optax.multi_transform`` as
    ``MixtureParams("means", "log_precisions", "mixing_logits")``.
    """

    means: Any
    log_precisions: Any
    mixing_logits: Any


class MixturePrior(NamedTuple):
    """Hyperpriors on the mixture (Ullrich et al. 2017, §4), each None to leave that part free.

    Attributes:
      precision: Gamma(α, β) on the precisions λ_j of the non-zero components,
        −log density (1 − α)·log λ + β·λ up to a constant; mode (α − 1)/β. The
        default (250, 0.1) is Ullrich et al.'s (mode ≈ 2490, σ ≈ 0.02). Without
        it a component's variance can collapse to zero.
      zero_precision: Gamma(α, β) on λ_0 of the zero component; default
        Ullrich et al.'s (5000, 2) (mode ≈ 2500).
      zero_mixing: Beta(a, b) on π_0, used when π_0 is learned
        (``learn_zero_mixing=True``), or None.

    Each pair needs α >= 1 and β > 0 (a proper prior with a mode).
    """

    precision: Optional[Pair] = (250.0, 0.1)
    zero_precision: Optional[Pair] = (5000.0, 2.0)
    zero_mixing: Optional[Pair] = None


#: Ullrich et al.'s hyperpriors, the default of :func:`optreg.soft_share_prior`.
ULLRICH_PRIOR = MixturePrior()


class MixtureState(NamedTuple):
    """State of :func:`optreg.soft_share_prior`: the mixture, its optimizer's state and the mask.

    π = softmax(mixing_logits), λ_j = exp(log_precisions_j), σ_j = λ_j^(−1/2);
    ``means[0]`` is always 0 (the zero component). Every leaf is an array, so
    the state checkpoints with Orbax like any optax state.

    Attributes:
      count: number of updates so far (drives ``weight_decay`` schedules).
      means: μ_j, shape (K,), float32.
      log_precisions: log λ_j, shape (K,), float32.
      mixing_logits: shape (K,), float32 (stored normalised: log π).
      optimizer: the state of the mixture's optimizer (over a :class:`MixtureParams`).
      mask: which leaves of the params the prior acts on: a 1-D bool array
        with one flag per leaf of the params (in ``jax.tree.leaves`` order),
        recorded by ``init`` (a flat array rather than a params-shaped tree, so
        ``optax.tree_utils.tree_map_params`` never takes it for parameters),
        so that :func:`optreg.quantize` and :func:`optreg.compression_report`
        reuse the transform's mask. None (e.g. in a hand-made state): every
        floating leaf.
      cache: the fast mode's table of the weight gradient and the mixture it was
        built for, kept between refreshes (``refresh_every > 1``), else None. A
        state whose mixture was edited by hand is refreshed at its next update.
    """

    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as in optax's states
    means: jax.Array
    log_precisions: jax.Array
    mixing_logits: jax.Array
    optimizer: Any = None
    mask: Any = None
    cache: Any = None


# ----------------------------------------------------------------------------- checks


def check_pair(value: Any, name: str) -> Optional[Pair]:
    """A (shape, rate) hyperprior pair, or None."""
    if value is None:
        return None
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(is_concrete_number(v) and math.isfinite(float(v)) for v in value)
    ):
        raise ValueError(f"{name} must be a pair of finite numbers (or None), got {name}={value!r}.")
    first, second = float(value[0]), float(value[1])
    if first < 1.0 or second <= 0.0:
        raise ValueError(
            f"{name} = (shape, rate) needs shape >= 1 and rate > 0 (a proper prior with a mode), got {value!r}."
        )
    return first, second


def check_prior(prior: Any) -> MixturePrior:
    """``prior`` as a validated :class:`MixturePrior`."""
    if not isinstance(prior, MixturePrior):
        raise TypeError(
            f"prior must be an optreg.MixturePrior(precision=..., zero_precision=..., zero_mixing=...), "
            f"got {type(prior).__name__}."
        )
    return MixturePrior(
        check_pair(prior.precision, "prior.precision"),
        check_pair(prior.zero_precision, "prior.zero_precision"),
        check_pair(prior.zero_mixing, "prior.zero_mixing"),
    )


# ----------------------------------------------------------------------------- the math


def as_mixture(state: Any, dtype: Any = jnp.float32) -> MixtureParams:
    """The mixture fields of a :class:`MixtureState` (or :class:`MixtureParams`) as arrays of ``dtype``."""
    return MixtureParams(*(jnp.asarray(field, dtype) for field in (state.means, state.log_precisions,
                                                                    state.mixing_logits)))


def log_joint(w: jax.Array, mixture: MixtureParams, log_mixing: jax.Array) -> jax.Array:
    """ℓ_j(w) = log π_j + log N(w | μ_j, 1/λ_j), shape w.shape + (K,), finite for finite w."""
    precisions = jnp.exp(mixture.log_precisions)
    distance = w[..., None] - mixture.means
    squared = jnp.minimum(precisions * distance * distance, BIG)
    return log_mixing + 0.5 * (mixture.log_precisions - _LOG_2PI) - 0.5 * squared


def negative_log_density(w: jax.Array, mixture: MixtureParams, log_mixing: jax.Array) -> jax.Array:
    """−log p(w), elementwise."""
    return -jax.nn.logsumexp(log_joint(w, mixture, log_mixing), axis=-1)


def weight_gradient(w: jax.Array, mixture: MixtureParams, log_mixing: jax.Array) -> jax.Array:
    """g(w) = −d log p(w)/dw = Σ_j r_j(w) λ_j (w − μ_j), elementwise and finite."""
    responsibility = jax.nn.softmax(log_joint(w, mixture, log_mixing), axis=-1)
    pull = jnp.clip(jnp.exp(mixture.log_precisions) * (w[..., None] - mixture.means), -MAX, MAX)
    return jnp.clip(jnp.sum(responsibility * pull, axis=-1), -MAX, MAX)


def hyperprior_nll(mixture: MixtureParams, log_mixing: jax.Array, prior: MixturePrior) -> jax.Array:
    """−log of the hyperpriors, up to constants.

    Gamma(λ | α, β) at λ = exp(log_precision) (Ullrich et al.'s form): (1 − α)·log λ + β·λ.
    Beta(π_0 | a, b): −(a − 1)·log π_0 − (b − 1)·log(1 − π_0).
    """
    total = jnp.zeros([], mixture.log_precisions.dtype)
    log_lambda = mixture.log_precisions
    if prior.zero_precision is not None:
        alpha, beta = prior.zero_precision
        total = total + (1.0 - alpha) * log_lambda[0] + beta * jnp.exp(log_lambda[0])
    if prior.precision is not None:
        alpha, beta = prior.precision
        total = total + jnp.sum((1.0 - alpha) * log_lambda[1:] + beta * jnp.exp(log_lambda[1:]))
    if prior.zero_mixing is not None:
        a, b = prior.zero_mixing
        total = total - (a - 1.0) * log_mixing[0] - (b - 1.0) * jax.nn.logsumexp(log_mixing[1:])
    return total


def in_mixture_dtype(w: Any) -> jax.Array:
    """A weight array in the dtype the mixture math runs in (float32; float64 stays float64)."""
    w = jnp.asarray(w)
    return w.astype(compute_dtype(w.dtype))


# ----------------------------------------------------------------------------- public helpers


def mixing_proportions(state: MixtureState) -> jax.Array:
    """π = softmax(mixing_logits), shape (K,).

    Args:
      state: a :class:`MixtureState` (or anything with ``mixing_logits``).

    Returns:
      The mixing proportions, float32, summing to 1.

    Example:
      >>> import jax.numpy as jnp, optreg
      >>> state = optreg.soft_share_prior(1e-3, 3).init({"w": jnp.linspace(-1.0, 1.0, 5)})
      >>> [round(float(p), 3) for p in optreg.mixing_proportions(state)]
      [0.99, 0.005, 0.005]

    References:
      Nowlan & Hinton, "Simplifying neural networks by soft weight-sharing", Neural Computation 1992.
    """
    return jax.nn.softmax(jnp.asarray(state.mixing_logits, jnp.float32))


def responsibilities(weights: jax.Array, state: MixtureState) -> jax.Array:
    """r_ij = π_j N(w_i | μ_j, 1/λ_j) / Σ_k π_k N(w_i | μ_k, 1/λ_k) for one array of weights.

    Args:
      weights: an array of weights.
      state: a :class:`MixtureState`.

    Returns:
      Shape ``weights.shape + (K,)`` (exact, O(N·K)); each row sums to 1.

    Example:
      >>> import jax.numpy as jnp, optreg
      >>> state = optreg.soft_share_prior(1e-3, 3).init({"w": jnp.linspace(-1.0, 1.0, 5)})
      >>> optreg.responsibilities(jnp.zeros(2), state).shape
      (2, 3)

    References:
      Nowlan & Hinton, "Simplifying neural networks by soft weight-sharing", Neural Computation 1992, eq. (4).
    """
    w = in_mixture_dtype(weights)
    mixture = as_mixture(state, w.dtype)
    return jax.nn.softmax(log_joint(w, mixture, jax.nn.log_softmax(mixture.mixing_logits)), axis=-1)


def mixture_density(x: jax.Array, state: MixtureState) -> jax.Array:
    """p(x) = Σ_j π_j N(x | μ_j, 1/λ_j), elementwise (e.g. to plot over a weight histogram).

    Args:
      x: points.
      state: a :class:`MixtureState`.

    Returns:
      The density at every point, the shape of ``x``.

    Example:
      >>> import jax.numpy as jnp, optreg
      >>> state = optreg.soft_share_prior(1e-3, 3).init({"w": jnp.linspace(-1.0, 1.0, 5)})
      >>> round(float(optreg.mixture_density(jnp.zeros(1), state)[0]), 2)  # 0.99·N(0 | 0, 0.4²) + tails
      0.99

    References:
      Ullrich, Meeds & Welling, "Soft weight-sharing for neural network compression", ICLR 2017, eq. (3).
    """
    w = in_mixture_dtype(x)
    mixture = as_mixture(state, w.dtype)
    return jnp.exp(-negative_log_density(w, mixture, jax.nn.log_softmax(mixture.mixing_logits)))


def exact_weight_gradient(weights: jax.Array, state: MixtureState) -> jax.Array:
    """The exact Σ_j r_ij λ_j (w_i − μ_j) per weight (without τ), in the mixture dtype."""
    w = in_mixture_dtype(weights)
    mixture = as_mixture(state, w.dtype)
    return weight_gradient(w, mixture, jax.nn.log_softmax(mixture.mixing_logits))


def recorded_mask(recorded: Any, params: Any, function: str) -> list[Any]:
    """The flags a :class:`MixtureState` recorded at ``init``, one per leaf of ``params``."""
    count = len(jax.tree.leaves(params))
    if np.shape(recorded) != (count,):
        raise ValueError(
            f"{function}: the state's recorded mask has shape {np.shape(recorded)}, the params have {count} "
            "leaves: pass the params the transform was initialised with (under optax.masked, its mask= too)."
        )
    return [recorded[index] for index in range(count)]
