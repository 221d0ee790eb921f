"""Soft weight sharing: a learned Gaussian-mixture prior on the weights (seed 002).

The prior is p(w) = Π_i Σ_j π_j N(w_i | μ_j, 1/λ_j) and the penalty is

    Ω(w, θ) = τ · [ −Σ_i log p(w_i)  −  log Gamma(λ_j | α, β) terms  (−  log Beta(π_0 | a, b)) ]

with responsibilities r_ij = π_j N(w_i|μ_j,1/λ_j) / Σ_k π_k N(w_i|μ_k,1/λ_k) and

    ∂Ω/∂w_i = τ Σ_j r_ij λ_j (w_i − μ_j).

Component 0 is the *zero component*: its mean is pinned at 0 and it carries a
large mixing proportion π_0 (fixed, or learned under a Beta prior), so that
training drives most weights to exactly-representable zeros.

Seed 002's penalty λ·R(W), R = Σ_i Σ_j γ_ij (w_i − μ_j)², is the special case
where the soft assignments γ_ij = r_ij are held fixed (no gradient through
them) and every component has the same precision λ_p: then
∂(λR)/∂w_i = 2λ Σ_j r_ij (w_i − μ_j), which is ∂Ω/∂w_i when τ·λ_p = 2λ.
(For explicit, user-given groups see :func:`optreg.share_within_groups`.)

Two modes compute the same update:

* ``"exact"``: the closed form for every weight and every component, O(N·K)
  exponentials per step.
* ``"fast"`` (default): the weight gradient g(w) = Σ_j r_j(w) λ_j (w − μ_j) is a
  smooth scalar function of w once the mixture is fixed, so it is tabulated
  (value and derivative) on ``grid_size`` points spanning the weights' range
  and evaluated by cubic Hermite interpolation: O(G·K + N) per step. The sums
  the mixture update needs come from a histogram of the weights on the same
  grid (each weight counted at its nearest grid point). No N×K array is formed.

References:
  Nowlan & Hinton, "Simplifying neural networks by soft weight-sharing", Neural Computation 1992.
  Ullrich, Meeds & Welling, "Soft weight-sharing for neural network compression", ICLR 2017.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optreg import _hyper, _tree
from optreg._checks import is_concrete_number, require_params
from optreg._hyper import Hyperparameter
from optreg._tree import Mask

#: Ullrich et al.'s Gamma(α, β) hyperprior on the non-zero components' precisions (mode (α−1)/β ≈ 2490).
DEFAULT_PRECISION_PRIOR = (250.0, 0.1)
#: Ullrich et al.'s Gamma(α, β) hyperprior on the zero component's precision (mode ≈ 2500).
DEFAULT_ZERO_PRECISION_PRIOR = (5000.0, 2.0)
#: Adam learning rates for (means, log_precisions, mixing_logits).
DEFAULT_LEARNING_RATES = (3e-4, 3e-3, 3e-3)
#: Bounds on log λ_j, a last guard for extreme inputs (σ between 4.5e-5 and 2.2e4).
LOG_PRECISION_BOUNDS = (-20.0, 20.0)

_LOG_2PI = math.log(2.0 * math.pi)
_BIG = 1e30  # cap on λ(w − μ)², keeps every log-density finite
_MAX = float(np.finfo(np.float32).max)


class MixtureParams(NamedTuple):
    """The mixture's learned parameters (also the structure of their Adam moments)."""

    means: jax.Array
    log_precisions: jax.Array
    mixing_logits: jax.Array


class MixtureState(NamedTuple):
    """State of :func:`soft_share_prior`: the mixture and its optimizer.

    π = softmax(mixing_logits), λ_j = exp(log_precisions_j), σ_j = λ_j^(−1/2);
    ``means[0]`` is always 0 (the zero component).

    Attributes:
      count: number of updates so far (drives ``strength`` schedules).
      means: μ_j, shape (K,), float32.
      log_precisions: log λ_j, shape (K,), float32.
      mixing_logits: shape (K,), float32.
      optimizer: ``optax.ScaleByAdamState`` of the mixture's own Adam step
        (its moments are :class:`MixtureParams`).
    """

    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as in optax's states
    means: jax.Array
    log_precisions: jax.Array
    mixing_logits: jax.Array
    optimizer: Any


# ----------------------------------------------------------------------------- the math, written once


def _log_joint(w: jax.Array, mixture: MixtureParams, log_mixing: jax.Array) -> jax.Array:
    """log π_j + log N(w | μ_j, 1/λ_j), shape w.shape + (K,), finite for finite w."""
    precisions = jnp.exp(mixture.log_precisions)
    distance = w[..., None] - mixture.means
    squared = jnp.minimum(precisions * distance * distance, _BIG)
    return log_mixing + 0.5 * (mixture.log_precisions - _LOG_2PI) - 0.5 * squared


def _negative_log_density(w: jax.Array, mixture: MixtureParams, log_mixing: jax.Array) -> jax.Array:
    """−log p(w), elementwise."""
    return -jax.nn.logsumexp(_log_joint(w, mixture, log_mixing), axis=-1)


def _weight_gradient(w: jax.Array, mixture: MixtureParams, log_mixing: jax.Array) -> jax.Array:
    """g(w) = −d log p(w)/dw = Σ_j r_j(w) λ_j (w − μ_j), elementwise and finite."""
    responsibility = jax.nn.softmax(_log_joint(w, mixture, log_mixing), axis=-1)
    pull = jnp.clip(jnp.exp(mixture.log_precisions) * (w[..., None] - mixture.means), -_MAX, _MAX)
    return jnp.clip(jnp.sum(responsibility * pull, axis=-1), -_MAX, _MAX)


def _hyperprior_nll(
    mixture: MixtureParams,
    log_mixing: jax.Array,
    precision_prior: Optional[tuple[float, float]],
    zero_precision_prior: Optional[tuple[float, float]],
    zero_mixing_prior: Optional[tuple[float, float]],
) -> jax.Array:
    """−log of the hyperpriors, up to constants.

    Gamma(λ | α, β) evaluated at λ = exp(log_precision) (Ullrich et al.'s form):
    (1 − α)·log λ + β·λ. Beta(π_0 | a, b): −(a − 1)·log π_0 − (b − 1)·log(1 − π_0).
    """
    total = jnp.zeros([], jnp.float32)
    log_lambda = mixture.log_precisions
    if zero_precision_prior is not None:
        alpha, beta = zero_precision_prior
        total = total + (1.0 - alpha) * log_lambda[0] + beta * jnp.exp(log_lambda[0])
    if precision_prior is not None:
        alpha, beta = precision_prior
        total = total + jnp.sum((1.0 - alpha) * log_lambda[1:] + beta * jnp.exp(log_lambda[1:]))
    if zero_mixing_prior is not None:
        a, b = zero_mixing_prior
        log_rest = jax.nn.logsumexp(log_mixing[1:])
        total = total - (a - 1.0) * log_mixing[0] - (b - 1.0) * log_rest
    return total


def _as_mixture(state: MixtureState) -> MixtureParams:
    return MixtureParams(
        jnp.asarray(state.means, jnp.float32),
        jnp.asarray(state.log_precisions, jnp.float32),
        jnp.asarray(state.mixing_logits, jnp.float32),
    )


def _selected_weights(params: Any, mask: Mask) -> list[jax.Array]:
    selected = _tree.resolve_mask(mask, params)
    return [
        jnp.asarray(leaf)
        for leaf, chosen in zip(jax.tree.leaves(params), selected)
        if chosen and _tree.is_floating(leaf)
    ]


def _float32(w: jax.Array) -> jax.Array:
    return w.astype(jnp.promote_types(w.dtype, jnp.float32))


# ----------------------------------------------------------------------------- public helpers


def mixing_proportions(state: MixtureState) -> jax.Array:
    """π = softmax(mixing_logits), shape (K,)."""
    return jax.nn.softmax(jnp.asarray(state.mixing_logits, jnp.float32))


def responsibilities(weights: jax.Array, state: MixtureState) -> jax.Array:
    """r_ij for one array of weights: shape ``weights.shape + (K,)`` (exact, O(N·K))."""
    mixture = _as_mixture(state)
    log_mixing = jax.nn.log_softmax(mixture.mixing_logits)
    return jax.nn.softmax(_log_joint(_float32(jnp.asarray(weights)), mixture, log_mixing), axis=-1)


def mixture_density(x: jax.Array, state: MixtureState) -> jax.Array:
    """p(x) = Σ_j π_j N(x | μ_j, 1/λ_j), elementwise (e.g. to plot over a weight histogram)."""
    mixture = _as_mixture(state)
    log_mixing = jax.nn.log_softmax(mixture.mixing_logits)
    return jnp.exp(-_negative_log_density(_float32(jnp.asarray(x)), mixture, log_mixing))


def soft_share_gradient(weights: jax.Array, state: MixtureState) -> jax.Array:
    """The exact weight gradient Σ_j r_ij λ_j (w_i − μ_j) per weight (without τ), in float32."""
    mixture = _as_mixture(state)
    log_mixing = jax.nn.log_softmax(mixture.mixing_logits)
    return _weight_gradient(_float32(jnp.asarray(weights)), mixture, log_mixing)


def soft_share_penalty(
    params: Any,
    state: MixtureState,
    strength: Any = 1.0,
    *,
    mask: Mask = None,
    precision_prior: Optional[tuple[float, float]] = DEFAULT_PRECISION_PRIOR,
    zero_precision_prior: Optional[tuple[float, float]] = DEFAULT_ZERO_PRECISION_PRIOR,
    zero_mixing_prior: Optional[tuple[float, float]] = None,
) -> jax.Array:
    """Ω = τ·[−Σ_i log p(w_i) − log hyperpriors], the loss-side form of :func:`soft_share_prior`.

    Differentiable in ``params`` (its gradient is what the transform adds) and in
    the mixture fields of ``state`` (what the transform's mixture step descends).
    Use the same hyperprior settings as the transform.

    Args:
      params: any pytree of arrays (the masked floating leaves are penalised).
      state: a :class:`MixtureState` (e.g. from ``soft_share_prior(...).init``).
      strength: τ >= 0.
      mask: optax-style mask.
      precision_prior: Gamma (α, β) on λ_j, j >= 1, or None.
      zero_precision_prior: Gamma (α, β) on λ_0, or None.
      zero_mixing_prior: Beta (a, b) on π_0, or None (the transform's
        ``zero_mixing_prior`` when ``learn_zero_mixing=True``).

    Returns:
      A float32 scalar.

    References:
      Ullrich, Meeds & Welling, "Soft weight-sharing for neural network compression", ICLR 2017, eq. (5)–(6).
    """
    mixture = _as_mixture(state)
    log_mixing = jax.nn.log_softmax(mixture.mixing_logits)
    total = jnp.zeros([], jnp.float32)
    for w in _selected_weights(params, mask):
        total = total + jnp.sum(_negative_log_density(_float32(w), mixture, log_mixing))
    total = total + _hyperprior_nll(mixture, log_mixing, precision_prior, zero_precision_prior, zero_mixing_prior)
    return jnp.asarray(strength, jnp.float32) * total


# ----------------------------------------------------------------------------- the fast path


class _Grid(NamedTuple):
    low: jax.Array
    step: jax.Array
    size: int


def _grid_over(weights: Sequence[jax.Array], size: int) -> _Grid:
    """``size`` points evenly spanning the global [min w, max w] of all selected weights."""
    low = jnp.min(jnp.stack([jnp.min(w) for w in weights]))
    high = jnp.max(jnp.stack([jnp.max(w) for w in weights]))
    width = jnp.maximum(high - low, 1e-6 * jnp.maximum(1.0, jnp.maximum(jnp.abs(low), jnp.abs(high))))
    return _Grid(low, width / (size - 1), size)


class _GridTerms(NamedTuple):
    """The mixture evaluated at the grid points x_g: what the table and the mixture's gradient share."""

    responsibility: jax.Array  # (G, K) r_j(x_g)
    precisions: jax.Array  # (K,) λ_j
    distance: jax.Array  # (G, K) x_g − μ_j
    pull: jax.Array  # (G, K) a_j = λ_j (x_g − μ_j)


def _grid_terms(grid: _Grid, mixture: MixtureParams, log_mixing: jax.Array) -> _GridTerms:
    points = grid.low + grid.step * jnp.arange(grid.size, dtype=jnp.float32)
    precisions = jnp.exp(mixture.log_precisions)
    distance = points[:, None] - mixture.means
    return _GridTerms(
        responsibility=jax.nn.softmax(_log_joint(points, mixture, log_mixing), axis=-1),
        precisions=precisions,
        distance=distance,
        pull=jnp.clip(precisions * distance, -_MAX, _MAX),
    )


def _hermite_table(terms: _GridTerms, step: jax.Array) -> jax.Array:
    """Cubic Hermite coefficients of g on each grid cell, shape (G − 1, 4), in closed form.

    With r = softmax(ℓ), ℓ_j(x) = log π_j + log N(x | μ_j, 1/λ_j) and a_j = λ_j (x − μ_j):
    g = Σ_j r_j a_j and, since dr_j/dx = r_j (g − a_j), g' = Σ_j r_j λ_j − Σ_j r_j (a_j − g)²
    (the variance form, which does not cancel). On cell k with s ∈ [0, 1]:
    g ≈ c0 + s·(c1 + s·(c2 + s·c3)), matching g and g' at both ends. (Autodiff of the same
    expressions, forward and tangent, cost 2.4 ms instead of a fraction of that at G = 4096, K = 17.)
    """
    r = terms.responsibility
    value = jnp.clip(jnp.sum(r * terms.pull, axis=-1), -_MAX, _MAX)
    spread = jnp.minimum(jnp.square(terms.pull - value[:, None]), _MAX)
    slope = jnp.sum(r * terms.precisions, axis=-1) - jnp.sum(r * spread, axis=-1)
    slope = jnp.clip(slope * step, -_MAX, _MAX)
    g0, g1, d0, d1 = value[:-1], value[1:], slope[:-1], slope[1:]
    table = jnp.stack([g0, d0, 3.0 * (g1 - g0) - 2.0 * d0 - d1, 2.0 * (g0 - g1) + d0 + d1], axis=-1)
    # |c_i| <= max/4 keeps Horner's rule for s in [0, 1] finite (only astronomically wide grids get there).
    return jnp.clip(table, -_MAX / 4, _MAX / 4)


def _data_gradient(terms: _GridTerms, counts: jax.Array) -> MixtureParams:
    """∂/∂(μ, log λ, log π) of Σ_g c_g·(−log p(x_g)) in closed form (the last field is w.r.t. log π):

        ∂(−log p)/∂μ_j = −r_j a_j,  ∂(−log p)/∂log λ_j = −r_j (1 − a_j (x − μ_j)) / 2,  ∂(−log p)/∂log π_j = −r_j.
    """
    weighted = counts[:, None] * terms.responsibility
    inside = terms.precisions * terms.distance * terms.distance < _BIG  # where ℓ_j was capped its derivatives are 0
    return MixtureParams(
        means=-jnp.sum(jnp.where(inside, weighted * terms.pull, 0.0), axis=0),
        log_precisions=-0.5 * jnp.sum(jnp.where(inside, weighted * (1.0 - terms.pull * terms.distance), weighted),
                                      axis=0),
        mixing_logits=-jnp.sum(weighted, axis=0),
    )


def _cell(w: jax.Array, grid: _Grid) -> tuple[jax.Array, jax.Array]:
    """Cell index k in [0, G − 2] and position s in [0, 1] of each weight."""
    t = (w - grid.low) / grid.step
    cell = jnp.clip(jnp.floor(t), 0, grid.size - 2)
    return cell.astype(jnp.int32), jnp.clip(t - cell, 0.0, 1.0)


def _interpolate(table: jax.Array, cell: jax.Array, s: jax.Array) -> jax.Array:
    # One gather of a 4-vector per weight, laid out like the weights (no gather across shards).
    c = table.at[cell].get(out_sharding=_tree.sharding_of(cell, trailing_axes=1))
    value = c[..., 0] + s * (c[..., 1] + s * (c[..., 2] + s * c[..., 3]))
    # Dividing by 1 + 0·s (exactly 1 for finite s) makes the result an "expensive" value that XLA
    # writes once rather than recomputes in each consumer. Without it, in chain(soft_share_prior, adam)
    # XLA:CPU writes the gathered (N, 4) coefficients and evaluates the cubic in both of Adam's
    # moment loops: 141 instead of ~97 bytes/param and about twice the time.
    return jnp.clip(value / (1.0 + 0.0 * s), -_MAX, _MAX)


def _histogram(cells: Sequence[tuple[jax.Array, jax.Array]], size: int) -> jax.Array:
    """Counts of the weights at their nearest grid point (they sum to N): one scatter-add per leaf.

    The indices keep the weights' shape (no reshape of a sharded array): each
    device counts its own shard and one all-reduce of ``size`` numbers sums them.
    """
    counts = jnp.zeros([size], jnp.int32)
    for cell, s in cells:
        counts = counts.at[cell + (s > 0.5)].add(1, out_sharding=_tree.sharding_of(counts))
    return counts.astype(jnp.float32)


# ----------------------------------------------------------------------------- the transform


def _check_pair(value: Any, name: str, *, optional: bool = True) -> Optional[tuple[float, float]]:
    if value is None and optional:
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


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(
            f"{name} must be a Python int >= {minimum}, got {value!r}. With optax.inject_hyperparams, "
            f"list it in static_args."
        )
    if int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {name}={value!r}.")
    return int(value)


def _check_fraction(value: Any, name: str) -> None:
    if is_concrete_number(value) and not 0.0 < float(value) < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {name}={value!r}.")


def _initial_mixture(
    weights: Sequence[jax.Array],
    num_components: int,
    zero_mixing: Any,
    init_range: Optional[tuple[float, float]],
    init_std: Optional[float],
) -> MixtureParams:
    if init_range is not None:
        low, high = jnp.float32(init_range[0]), jnp.float32(init_range[1])
    elif weights:
        low = jnp.min(jnp.stack([jnp.min(_float32(w)) for w in weights])).astype(jnp.float32)
        high = jnp.max(jnp.stack([jnp.max(_float32(w)) for w in weights])).astype(jnp.float32)
    else:
        low, high = jnp.float32(-1.0), jnp.float32(1.0)
    means = jnp.concatenate([jnp.zeros([1], jnp.float32), jnp.linspace(low, high, num_components - 1)])
    std = jnp.float32(init_std) if init_std is not None else jnp.maximum(high - low, 1e-3) / 5.0
    log_precisions = jnp.full([num_components], -2.0 * jnp.log(std), jnp.float32)
    zero = jnp.asarray(zero_mixing, jnp.float32)
    rest = jnp.log1p(-zero) - jnp.log(jnp.float32(num_components - 1))
    logits = jnp.concatenate([jnp.log(zero)[None], jnp.full([num_components - 1], rest)])
    return MixtureParams(means, log_precisions, logits.astype(jnp.float32))


def _pin(mixture: MixtureParams, zero_mixing: Any, learn_zero_mixing: bool) -> MixtureParams:
    """μ_0 = 0; log λ within bounds; with a fixed π_0, logits_0 set so softmax gives π_0."""
    means = mixture.means.at[0].set(0.0)
    log_precisions = jnp.clip(mixture.log_precisions, *LOG_PRECISION_BOUNDS)
    logits = mixture.mixing_logits - jax.nn.logsumexp(mixture.mixing_logits)
    if not learn_zero_mixing:
        zero = jnp.asarray(zero_mixing, jnp.float32)
        rest = logits[1:] - jax.nn.logsumexp(logits[1:]) + jnp.log1p(-zero)
        logits = jnp.concatenate([jnp.log(zero)[None], rest])
    return MixtureParams(means, log_precisions, logits)


def soft_share_prior(
    num_components: int = 17,
    strength: Optional[Hyperparameter] = None,
    *,
    zero_mixing: Any = 0.99,
    learn_zero_mixing: bool = False,
    zero_mixing_prior: Optional[tuple[float, float]] = None,
    precision_prior: Optional[tuple[float, float]] = DEFAULT_PRECISION_PRIOR,
    zero_precision_prior: Optional[tuple[float, float]] = DEFAULT_ZERO_PRECISION_PRIOR,
    learning_rates: tuple[float, float, float] = DEFAULT_LEARNING_RATES,
    init_range: Optional[tuple[float, float]] = None,
    init_std: Optional[float] = None,
    mode: str = "fast",
    grid_size: int = 4096,
    mask: Mask = None,
) -> optax.GradientTransformation:
    """Adds τ·Σ_j r_ij λ_j (w_i − μ_j), the gradient of a learned mixture prior, and learns the mixture.

    ``update(updates, state, params)`` adds the weight gradient of
    :func:`soft_share_penalty` computed from the **incoming** state's mixture,
    then takes one Adam step on the mixture (means, log-precisions, mixing
    logits, each with its own learning rate as in Ullrich et al.) descending
    the same penalty divided by τ (Adam ignores that scale; the mixture keeps
    learning during a τ warm-up with τ = 0). μ_0 stays 0; with
    ``learn_zero_mixing=False`` π_0 stays ``zero_mixing``. Gamma hyperpriors keep
    every precision finite, so no component collapses to zero variance.

    Chain it before the optimizer (it is a loss term)::

        tx = optax.chain(optreg.soft_share_prior(17, strength=0.005 / n_train), optax.adam(5e-4))

    ``init(params)`` is deterministic: μ_1..μ_{K−1} evenly over the initial
    weights' range (or ``init_range``), σ_j = range/5 (or ``init_std``),
    π_0 = ``zero_mixing`` and the rest equal.

    Args:
      num_components: K >= 2, including the zero component (static).
      strength: τ >= 0, float, 0-d array or optax schedule (e.g. a linear warm-up).
        Ullrich et al. use τ ≈ 0.003–0.005 / N_train with a mean-over-batch data loss.
      zero_mixing: π_0 in (0, 1) (fixed, or the initial value when learned).
      learn_zero_mixing: learn π_0 too (under ``zero_mixing_prior`` if given).
      zero_mixing_prior: Beta (a, b) on π_0 when it is learned, or None.
      precision_prior: Gamma (α, β) hyperprior on λ_j, j >= 1, or None (then
        variances can collapse; not recommended).
      zero_precision_prior: Gamma (α, β) hyperprior on λ_0, or None.
      learning_rates: Adam step sizes for (means, log_precisions, mixing_logits).
      init_range: (low, high) for the initial means instead of the weights' range.
      init_std: initial σ of every component instead of range/5.
      mode: ``"fast"`` (tabulate + interpolate, histogram sums) or ``"exact"``.
      grid_size: number of grid points of the fast mode (static, >= 16).
      mask: optax-style mask, e.g. to leave biases alone. The mixture is shared
        by, and its statistics are global over, all selected leaves.

    Returns:
      An ``optax.GradientTransformation`` with a :class:`MixtureState`; ``update`` requires ``params``.

    Raises:
      ValueError, TypeError: at construction for bad arguments (named in the message).

    References:
      Nowlan & Hinton, "Simplifying neural networks by soft weight-sharing", Neural Computation 1992.
      Ullrich, Meeds & Welling, "Soft weight-sharing for neural network compression", ICLR 2017.
    """
    num_components = _check_int(num_components, "num_components", 2)
    grid_size = _check_int(grid_size, "grid_size", 16)
    if strength is None:
        raise ValueError(
            "soft_share_prior needs strength=τ (a float or schedule); Ullrich et al. use τ ≈ 0.005 / N_train."
        )
    _hyper.check_hyperparameter(strength, "strength")
    _check_fraction(zero_mixing, "zero_mixing")
    if mode not in ("fast", "exact"):
        raise ValueError(f"mode must be 'fast' or 'exact', got mode={mode!r}.")
    precision_prior = _check_pair(precision_prior, "precision_prior")
    zero_precision_prior = _check_pair(zero_precision_prior, "zero_precision_prior")
    zero_mixing_prior = _check_pair(zero_mixing_prior, "zero_mixing_prior")
    if (
        not isinstance(learning_rates, (tuple, list))
        or len(learning_rates) != 3
        or not all(is_concrete_number(v) and math.isfinite(float(v)) and float(v) >= 0 for v in learning_rates)
    ):
        raise ValueError(
            "learning_rates must be three finite numbers >= 0 for (means, log_precisions, mixing_logits), "
            f"got learning_rates={learning_rates!r}."
        )
    rates: Any = MixtureParams(*(float(v) for v in learning_rates))  # type: ignore[arg-type]
    if init_range is not None and (
        len(init_range) != 2 or not all(is_concrete_number(v) for v in init_range)
        or not float(init_range[0]) < float(init_range[1])
    ):
        raise ValueError(f"init_range must be (low, high) with low < high, got init_range={init_range!r}.")
    if init_std is not None and not (is_concrete_number(init_std) and 0 < float(init_std) < math.inf):
        raise ValueError(f"init_std must be a finite number > 0, got init_std={init_std!r}.")
    adam = optax.scale_by_adam()
    beta_prior = zero_mixing_prior if learn_zero_mixing else None

    def learned_log_mixing(mixture: MixtureParams) -> jax.Array:
        """log π as the mixture update parameterises it."""
        if learn_zero_mixing:
            return jax.nn.log_softmax(mixture.mixing_logits)
        # π_0 fixed: the other logits share 1 − π_0
        zero = jnp.asarray(zero_mixing, jnp.float32)
        rest = jax.nn.log_softmax(mixture.mixing_logits[1:]) + jnp.log1p(-zero)
        return jnp.concatenate([jnp.log(zero)[None], rest])

    def mixture_objective(mixture: MixtureParams, data_nll: Any) -> jax.Array:
        log_mixing = learned_log_mixing(mixture)
        prior = _hyperprior_nll(mixture, log_mixing, precision_prior, zero_precision_prior, beta_prior)
        return data_nll(mixture, log_mixing) + prior

    @jax.jit
    def initial_mixture(weights: list[jax.Array], zero: jax.Array) -> MixtureParams:
        mixture = _initial_mixture(weights, num_components, zero, init_range, init_std)
        return _pin(mixture, zero, learn_zero_mixing)

    def init_fn(params: Any) -> MixtureState:
        _tree.check_real(params)
        weights = _selected_weights(params, mask)
        mixture = initial_mixture(weights, jnp.asarray(zero_mixing, jnp.float32))
        return MixtureState(
            _hyper.init_count().count, mixture.means, mixture.log_precisions, mixture.mixing_logits,
            adam.init(mixture),
        )

    def update_fn(updates: Any, state: MixtureState, params: Optional[Any] = None) -> tuple[Any, MixtureState]:
        params = require_params(params, "soft_share_prior")
        selected = _tree.resolve_mask(mask, params)
        update_leaves, structure = jax.tree_util.tree_flatten(updates)
        treedef: Any = structure
        param_leaves = treedef.flatten_up_to(params)
        chosen = [
            index for index, (u, w, keep) in enumerate(zip(update_leaves, param_leaves, selected))
            if keep and _tree.is_floating(u) and _tree.is_floating(w)
        ]
        mixture = _as_mixture(state)
        log_mixing = jax.nn.log_softmax(mixture.mixing_logits)
        weights = [_float32(jnp.asarray(param_leaves[i])) for i in chosen]
        tau = _hyper.value_at(strength, state.count).astype(jnp.float32)

        if not weights:
            gradients: list[jax.Array] = []

            def data_nll(m: MixtureParams, lm: jax.Array) -> jax.Array:
                return jnp.zeros([], jnp.float32)
        elif mode == "exact":
            gradients = [_weight_gradient(w, mixture, log_mixing) for w in weights]

            def data_nll(m: MixtureParams, lm: jax.Array) -> jax.Array:
                return jnp.sum(jnp.stack([jnp.sum(_negative_log_density(w, m, lm)) for w in weights]))
        else:
            grid = _grid_over(weights, grid_size)
            cells = [_cell(w, grid) for w in weights]
            counts = _histogram(cells, grid_size)
            # The weights' table uses the state's π; the mixture's gradient the π its update
            # parameterises (the same after every update; they differ only in a hand-made state).
            terms = _grid_terms(grid, mixture, log_mixing)
            data_terms = terms if learn_zero_mixing else _grid_terms(grid, mixture, learned_log_mixing(mixture))
            data = jax.lax.stop_gradient(_data_gradient(data_terms, counts))
            table = _hermite_table(terms, grid.step)
            gradients = [_interpolate(table, cell, s) for cell, s in cells]

            def data_nll(m: MixtureParams, lm: jax.Array) -> jax.Array:
                # Linear in (μ, log λ, log π) with the closed-form gradient as slope: jax.grad of the
                # objective below then gives exactly that gradient (and its chain rule to the logits).
                return jnp.sum(data.means * m.means) + jnp.sum(data.log_precisions * m.log_precisions) + jnp.sum(
                    data.mixing_logits * lm)

        new_leaves = list(update_leaves)
        for index, gradient in zip(chosen, gradients):
            u = update_leaves[index]
            new_leaves[index] = (u + (tau * gradient).astype(u.dtype)).astype(u.dtype)

        grad = jax.grad(lambda m: mixture_objective(m, data_nll))(mixture)
        grad = jax.tree.map(lambda g: jnp.clip(jnp.nan_to_num(g), -_BIG, _BIG), grad)
        grad = grad._replace(means=grad.means.at[0].set(0.0))
        if not learn_zero_mixing:
            grad = grad._replace(mixing_logits=grad.mixing_logits.at[0].set(0.0))
        steps, optimizer = adam.update(grad, state.optimizer)
        stepped = jax.tree.map(lambda p, s, rate: p - rate * s, mixture, steps, rates)
        stepped = _pin(stepped, zero_mixing, learn_zero_mixing)
        new_state = MixtureState(
            optax.safe_int32_increment(state.count), stepped.means, stepped.log_precisions,
            stepped.mixing_logits, optimizer,
        )
        return jax.tree_util.tree_unflatten(treedef, new_leaves), new_state

    return optax.GradientTransformation(init_fn, update_fn)
