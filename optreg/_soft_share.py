"""Soft weight sharing: a learned Gaussian-mixture prior on the weights, as a transform and as a penalty.

The penalty is

    Ω(w, θ) = τ · [ −Σ_i log p(w_i)  −  log hyperpriors(θ) ],   p(w) = Σ_j π_j N(w | μ_j, 1/λ_j),

and the transform adds ∂Ω/∂w_i = τ Σ_j r_ij λ_j (w_i − μ_j) to the updates, then takes
one step of the mixture's own optimizer on θ = (μ, log λ, mixing logits). Component 0
is the *zero component*: μ_0 is pinned at 0 and π_0 is large (fixed, or learned under a
Beta prior), so that training drives most weights to exactly representable zeros.

The penalty λ·R(W), R = Σ_i Σ_j γ_ij (w_i − μ_j)² of soft assignments γ_ij, is the
special case with γ = r held fixed (no gradient through it) and one precision λ_p for
every component: its weight gradient is τ's when τ·λ_p = 2λ. (For explicit, user-given
groups see :func:`optreg.share_within_groups`.)

References:
  Nowlan & Hinton, "Simplifying neural networks by soft weight-sharing", Neural Computation 1992.
  Ullrich, Meeds & Welling, "Soft weight-sharing for neural network compression", ICLR 2017.
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optreg import _hyper, _tree
from optreg._checks import is_concrete_number, require_params
from optreg._hyper import Hyperparameter
from optreg._mixture import (
    BIG,
    LOG_PRECISION_BOUNDS,
    ULLRICH_PRIOR,
    MixtureParams,
    MixturePrior,
    MixtureState,
    as_mixture,
    check_prior,
    hyperprior_nll,
    in_mixture_dtype,
    negative_log_density,
    recorded_mask,
)
from optreg._soft_share_grid import (
    GridCache,
    cached_gradients,
    empty_cache,
    exact_pair,
    fast_pair,
    grid_over,
    grid_points,
    histogram_gradient,
    range_of,
    table_on,
    terms_at,
)
from optreg._tree import Mask

#: Ullrich et al.'s Adam step sizes for (means, log_precisions, mixing_logits).
DEFAULT_LEARNING_RATES = MixtureParams(3e-4, 3e-3, 3e-3)

_TRANSFORM_SPELLING = "soft_share_prior(weight_decay=τ, num_components=K)"
_PENALTY_SPELLING = "soft_share_penalty(params, weight_decay=τ, state=state)"
#: The mixture's step, the histogram and the fast mode's table are refreshed every this many updates
#: (``refresh_every=None``): a refresh costs about 2 ms on a 2-core CPU (LeNet-300-100, G = 4096, K = 17),
#: as much as three updates' interpolation; a Flax train step of LeNet-300-100 took 1.40-1.48x Adam's at
#: 16, 1.48-1.55x at 8 (benchmarks/bench_soft_share.py, two runs, each interleaved). Except on GPUs:
#: there XLA's conditional that skips a refresh costs more than the refresh itself (the transform alone
#: on an NVIDIA H200, K = 17: 112 µs per update when refreshing every update, 177 µs every 8th;
#: benchmarks/results/gpu_h200_soft_share_end_to_end.txt).
DEFAULT_REFRESH_EVERY = 16
#: The largest grid: 16 MiB of float32 table (4 coefficients per point); 256 times the default.
MAX_GRID_SIZE = 2**20
#: JAX's name of a GPU backend (CUDA and ROCm alike).
_GPU_BACKEND = "gpu"


# ----------------------------------------------------------------------------- argument checks


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(
            f"{name} must be a Python int >= {minimum}, got {value!r}. With optax.inject_hyperparams, list the "
            "integer arguments as static: optax.inject_hyperparams(optreg.soft_share_prior, static_args=("
            "'num_components', 'grid_size', 'refresh_every'))(weight_decay=...). (The strength comes first: "
            f"{_TRANSFORM_SPELLING}.)"
        )
    if int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {name}={value!r}.")
    return int(value)


def _check_weight_decay(weight_decay: Any, spelling: str) -> None:
    if weight_decay is None:
        raise ValueError(
            f"soft sharing needs weight_decay=τ (a float or schedule); Ullrich et al. use τ ≈ 0.005 / N_train "
            f"with a mean-over-batch data loss: {spelling}."
        )
    if isinstance(weight_decay, (numbers.Integral, np.integer)) and not isinstance(weight_decay, bool) \
            and int(weight_decay) >= 2:
        raise TypeError(
            f"weight_decay={weight_decay!r} is an int: the arguments were reordered and the first one is now "
            f"the strength τ (before, num_components). Call {spelling}."
        )
    _hyper.check_hyperparameter(weight_decay, "weight_decay")


def _check_fraction(value: Any, name: str) -> None:
    if np.ndim(value) != 0:
        raise ValueError(f"{name} must be a scalar in (0, 1), got shape {np.shape(value)}: {name}={value!r}.")
    if is_concrete_number(value) and not 0.0 < float(value) < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {name}={value!r}.")


def _check_init(init_range: Any, init_std: Any) -> None:
    if init_range is not None and (
        not isinstance(init_range, (tuple, list)) or len(init_range) != 2
        or not all(is_concrete_number(v) for v in init_range) or not float(init_range[0]) < float(init_range[1])
    ):
        raise ValueError(f"init_range must be (low, high) with low < high, got init_range={init_range!r}.")
    if init_std is not None and not (is_concrete_number(init_std) and 0 < float(init_std) < math.inf):
        raise ValueError(f"init_std must be a finite number > 0, got init_std={init_std!r}.")


def _fields_optimizer(rates: Any) -> optax.GradientTransformation:
    """Adam with one step size per field of :class:`MixtureParams` (Ullrich et al.'s setting)."""
    if (
        not isinstance(rates, (tuple, list)) or len(rates) != 3
        or not all(is_concrete_number(v) and math.isfinite(float(v)) and float(v) >= 0 for v in rates)
    ):
        raise ValueError(
            "learning_rates must be three finite numbers >= 0 for (means, log_precisions, mixing_logits), "
            f"got learning_rates={rates!r}."
        )
    scales = MixtureParams(*(-float(v) for v in rates))
    scale = optax.stateless(lambda updates, params=None: jax.tree.map(lambda u, s: s * u, updates, scales))
    return optax.chain(optax.scale_by_adam(), scale)


_MOVED_TO_PRIOR = {"precision_prior": "precision", "zero_precision_prior": "zero_precision",
                   "zero_mixing_prior": "zero_mixing"}


def _legacy_keywords(spelling: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Old keywords: ``strength=`` (its meaning moved) raises a TypeError naming the new spelling;
    ``precision_prior=`` & co. (now ``prior=``) and ``learning_rates=`` (now ``optimizer=``) still work
    for one release with a DeprecationWarning. The wrapped signature stays the new one (as
    ``inspect.signature`` and ``optax.inject_hyperparams`` read it)."""

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        name = function.__name__

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if "strength" in kwargs:
                raise TypeError(f"{name}() no longer takes strength=: τ is now called weight_decay and comes "
                                f"first. Call {spelling}.")
            moved = [key for key in _MOVED_TO_PRIOR if key in kwargs]
            if moved:
                fields = ", ".join(f"{_MOVED_TO_PRIOR[key]}=..." for key in moved)
                warnings.warn(f"{name}({', '.join(key + '=...' for key in moved)}) is deprecated: pass "
                              f"prior=optreg.MixturePrior({fields}).", DeprecationWarning, stacklevel=2)
                prior = kwargs.get("prior", MixturePrior())
                kwargs["prior"] = prior._replace(**{_MOVED_TO_PRIOR[key]: kwargs.pop(key) for key in moved})
            if "learning_rates" in kwargs and name == "soft_share_prior":
                warnings.warn("soft_share_prior(learning_rates=...) is deprecated: pass optimizer=, e.g. "
                              "optax.multi_transform({...}, optreg.MixtureParams('means', 'log_precisions', "
                              "'mixing_logits')).", DeprecationWarning, stacklevel=2)
                if kwargs.get("optimizer") is not None:
                    raise TypeError("pass either optimizer= or the deprecated learning_rates=, not both.")
                kwargs["optimizer"] = _fields_optimizer(kwargs.pop("learning_rates"))
            return function(*args, **kwargs)

        return wrapper

    return decorate


# ----------------------------------------------------------------------------- the mixture


def selected_flags(params: Any, mask: Mask) -> list[bool]:
    """One bool per leaf: under the prior (selected by ``mask`` and floating)."""
    selected = _tree.resolve_mask(mask, params)
    return [keep and _tree.is_floating(leaf) for leaf, keep in zip(jax.tree.leaves(params), selected)]


def _initial_mixture(
    weights: Sequence[jax.Array], num_components: int, zero_mixing: Any, init_range: Any, init_std: Any
) -> MixtureParams:
    """μ_1..μ_{K−1} evenly over [min w, max w] (or ``init_range``), σ = range/5 (or ``init_std``), π_0 given."""
    if init_range is not None:
        low, high = jnp.float32(init_range[0]), jnp.float32(init_range[1])
    else:  # (-1, 1) without a finite weight
        low, high = range_of(weights, finite=True) if weights else (jnp.float32(jnp.inf), jnp.float32(-jnp.inf))
        low, high = jnp.where(low <= high, low, -1.0).astype(jnp.float32), \
            jnp.where(low <= high, high, 1.0).astype(jnp.float32)
    means = jnp.concatenate([jnp.zeros([1], jnp.float32), jnp.linspace(low, high, num_components - 1)])
    std = jnp.float32(init_std) if init_std is not None else jnp.maximum(high - low, 1e-3) / 5.0
    log_precisions = jnp.full([num_components], -2.0 * jnp.log(std), jnp.float32)
    zero = jnp.asarray(zero_mixing, jnp.float32)
    rest = jnp.log1p(-zero) - jnp.log(jnp.float32(num_components - 1))
    logits = jnp.concatenate([jnp.log(zero)[None], jnp.full([num_components - 1], rest)])
    return MixtureParams(means, log_precisions, logits.astype(jnp.float32))


def pin(mixture: MixtureParams, zero_mixing: Any, learn_zero_mixing: bool) -> MixtureParams:
    """μ_0 = 0; log λ within bounds; logits normalised (log π); with a fixed π_0, log π_0 = log ``zero_mixing``."""
    means = mixture.means.at[0].set(0.0)
    log_precisions = jnp.clip(mixture.log_precisions, *LOG_PRECISION_BOUNDS)
    logits = mixture.mixing_logits - jax.nn.logsumexp(mixture.mixing_logits)
    if not learn_zero_mixing:
        zero = jnp.asarray(zero_mixing, logits.dtype)
        rest = logits[1:] - jax.nn.logsumexp(logits[1:]) + jnp.log1p(-zero)
        logits = jnp.concatenate([jnp.log(zero)[None], rest])
    return MixtureParams(means, log_precisions, logits)


def learned_log_mixing(logits: jax.Array, zero_mixing: Any, learn_zero_mixing: bool) -> jax.Array:
    """log π as the mixture update parameterises it (with π_0 fixed, the other logits share 1 − π_0)."""
    if learn_zero_mixing:
        return jax.nn.log_softmax(logits)
    zero = jnp.asarray(zero_mixing, logits.dtype)
    return jnp.concatenate([jnp.log(zero)[None], jax.nn.log_softmax(logits[1:]) + jnp.log1p(-zero)])


def mixture_step_gradient(
    mixture: MixtureParams, data: MixtureParams, prior: MixturePrior, zero_mixing: Any, learn_zero_mixing: bool
) -> MixtureParams:
    """The gradient the mixture's optimizer descends: ``data`` (w.r.t. μ, log λ, log π) plus the hyperpriors.

    The data part enters as a linear function with ``data`` as slope, so ``jax.grad`` gives exactly
    it (and its chain rule from log π to the logits); μ_0 and, when π_0 is fixed, logit 0 get 0.
    """
    data = jax.lax.stop_gradient(data)
    beta_prior = prior if learn_zero_mixing else prior._replace(zero_mixing=None)

    def objective(m: MixtureParams) -> jax.Array:
        log_mixing = learned_log_mixing(m.mixing_logits, zero_mixing, learn_zero_mixing)
        linear = jnp.sum(data.means * m.means) + jnp.sum(data.log_precisions * m.log_precisions)
        return linear + jnp.sum(data.mixing_logits * log_mixing) + hyperprior_nll(m, log_mixing, beta_prior)

    grad = jax.grad(objective)(mixture)
    grad = jax.tree.map(lambda g: jnp.clip(jnp.nan_to_num(g), -BIG, BIG), grad)
    grad = grad._replace(means=grad.means.at[0].set(0.0))
    if not learn_zero_mixing:
        grad = grad._replace(mixing_logits=grad.mixing_logits.at[0].set(0.0))
    return grad


# ----------------------------------------------------------------------------- the transform


def _refreshed_step(weights: list[jax.Array], state: MixtureState, mixture: MixtureParams, log_mixing: jax.Array,
                    learned: jax.Array, grid_size: int, every: int,
                    mixture_step: Callable[[MixtureParams], tuple[MixtureParams, Any]]) -> tuple[list, Any, Any, Any]:
    """The fast path with ``refresh_every = every > 1``: (weight gradients, stepped mixture, optimizer state, cache).

    One conditional per update. On a refresh (every ``every``-th update, or when the state's mixture is
    not the one its cached table was built for: the first update, or a state edited by hand) it lays a
    grid over the weights' current range, takes the mixture's gradient from their histogram on it,
    steps the mixture and builds the new mixture's table on the same grid for the next updates;
    otherwise it passes the state through. The weight gradients come from the incoming mixture's
    table either way: the cached one (built for it at the last refresh), or on a stale state one
    built now.
    """
    cached: GridCache = state.cache
    stale = jnp.any(jnp.stack([jnp.any(a != b) for a, b in zip(cached.mixture, mixture)]))

    def refresh(_: Any) -> tuple[GridCache, GridCache, MixtureParams, Any]:
        grid = grid_over(weights, grid_size, mixture)
        points = grid_points(grid)
        stepped, optimizer_state = mixture_step(histogram_gradient(weights, grid, terms_at(points, mixture, learned)))
        stepped_log_mixing = jax.nn.log_softmax(stepped.mixing_logits)
        after = table_on(grid, terms_at(points, stepped, stepped_log_mixing), stepped)
        now = jax.lax.cond(stale, lambda _: table_on(grid, terms_at(points, mixture, log_mixing), mixture),
                           lambda _: cached, None)
        return now, after, stepped, optimizer_state

    def keep(_: Any) -> tuple[GridCache, GridCache, MixtureParams, Any]:
        return cached, cached, mixture, state.optimizer

    now, after, stepped, optimizer_state = jax.lax.cond((state.count % every == 0) | stale, refresh, keep, None)
    return cached_gradients(weights, now), stepped, optimizer_state, after


def _gradient_pair(weights: list[jax.Array], mixture: MixtureParams, log_mixing: jax.Array, learned: jax.Array,
                   mode: str, grid_size: int) -> tuple[list[jax.Array], MixtureParams]:
    """(weight gradients, mixture gradient) by the chosen path; zeros when no leaf is selected."""
    if not weights:
        return [], MixtureParams(*(jnp.zeros_like(field) for field in mixture))
    if mode == "exact":
        return exact_pair(weights, mixture, log_mixing, learned)
    return fast_pair(weights, mixture, log_mixing, learned, grid_size)


@_legacy_keywords(_TRANSFORM_SPELLING)
def soft_share_prior(
    weight_decay: Hyperparameter,
    num_components: int = 17,
    *,
    prior: MixturePrior = ULLRICH_PRIOR,
    zero_mixing: Any = 0.99,
    learn_zero_mixing: bool = False,
    optimizer: Optional[optax.GradientTransformation] = None,
    init_range: Optional[tuple[float, float]] = None,
    init_std: Optional[float] = None,
    mode: str = "fast",
    grid_size: int = 4096,
    refresh_every: Optional[int] = None,
    mask: Mask = None,
) -> optax.GradientTransformation:
    """Adds τ·Σ_j r_ij λ_j (w_i − μ_j), the gradient of a learned mixture prior, and learns the mixture.

    ``update(updates, state, params)`` adds the weight gradient of :func:`soft_share_penalty`
    under the **incoming** state's mixture, then takes one step of ``optimizer`` on the
    mixture (:class:`MixtureParams`: means, log-precisions, mixing logits) descending
    the same penalty divided by τ (so the mixture keeps fitting the weights during a τ
    warm-up from 0), applied with ``optax.apply_updates``. μ_0 stays 0; with
    ``learn_zero_mixing=False`` π_0 stays ``zero_mixing``. The Gamma hyperpriors of
    ``prior`` keep every precision finite. Chain it before the optimizer (a loss term)::

        tx = optax.chain(optreg.soft_share_prior(0.005 / n_train, 17), optax.adam(5e-4))

    ``init(params)`` is deterministic: μ_1..μ_{K−1} evenly over the weights' range (or
    ``init_range``), σ_j = range/5 (or ``init_std``), π_0 = ``zero_mixing``, the rest equal;
    the state records the mask (see :class:`MixtureState`). :func:`optreg.soft_share_compress`
    runs the whole compression recipe around this transform.

    Args:
      weight_decay: τ >= 0: float, 0-d array or optax schedule (e.g. a warm-up). Ullrich et al.
        use τ ≈ 0.003–0.005 / N_train with a mean-over-batch data loss.
      num_components: K >= 2, the zero component included (static).
      prior: the hyperpriors, a :class:`MixturePrior` (default: Ullrich et al.'s Gamma priors).
      zero_mixing: π_0 in (0, 1), fixed, or the initial value when learned.
      learn_zero_mixing: learn π_0 too (under ``prior.zero_mixing`` if given).
      optimizer: the mixture's optimizer, any optax transform over a :class:`MixtureParams`,
        stepped once per refresh; default Adam with Ullrich et al.'s step sizes (3e-4, 3e-3, 3e-3)
        for (means, log-precisions, logits) times k = ``refresh_every`` (the same pace per update
        on average; Adam's k-fold step once every k updates is not k steps, so the trajectories
        differ: K = 9 fitted to 4 000 weights over 1000 updates at k = 1 and k = 16 ended with
        means up to 0.073 apart, about 2 σ of a component).
        For other rates: ``optax.multi_transform({...}, MixtureParams("means", "log_precisions",
        "mixing_logits"))``.
      init_range: (low, high) for the initial means instead of the weights' range.
      init_std: initial σ of every component instead of range/5.
      mode: ``"fast"`` (tabulated gradient, histogram sums: O(G·K + N)) or ``"exact"`` (O(N·K)).
      grid_size: G, the fast mode's grid points (static, >= 16).
      refresh_every: k >= 1 (static), or None (default): k = 1 when JAX's default backend is a GPU,
        16 otherwise, chosen at the first ``init`` (so a state made on a GPU has no ``cache`` and one
        made on a CPU has one: pass k explicitly for a checkpoint that moves between them). The
        mixture's step, and in the fast mode the weights' histogram
        and the table over the grid, are done every k-th update (the first included); the weight
        gradient is added at every update, from the table of the state's current mixture (which
        changes only at a refresh; a state whose mixture was edited by hand is noticed and refreshed
        at its next update). On a
        refresh the grid spans the weights' range plus 5 % on each side, but reaches no farther
        than 16 σ of the widest component beyond the outermost means (a far outlier would
        otherwise stretch it past resolving the mixture); a weight off the grid (one that left it
        since the refresh, or an outlier) gets the table's tangent at its end (linear
        extrapolation: beyond 16 σ every responsibility has settled and g is linear). A NaN
        weight gets NaN and changes nothing else. On a
        CPU, 16 makes the fixed per-step cost (table, histogram, mixture step) 16 times smaller; on a
        GPU the conditional that skips a refresh costs more than the refresh (an NVIDIA H200, K = 17:
        112 µs per update at k = 1, 177 µs at k = 8), hence 1 there.
      mask: optax-style mask (None: every floating leaf). The mixture is shared by, and its
        statistics are global over, all selected leaves.

    The old keywords ``precision_prior``, ``zero_precision_prior``, ``zero_mixing_prior`` (now
    ``prior``) and ``learning_rates`` (now ``optimizer``) still work with a DeprecationWarning;
    ``strength`` (now ``weight_decay``, first) raises a TypeError.

    Returns:
      An ``optax.GradientTransformation`` with a :class:`MixtureState`; ``update`` requires ``params``.

    Raises:
      ValueError, TypeError: at construction for bad arguments (named in the message).

    Example:
      >>> import jax.numpy as jnp, optax, optreg
      >>> params = {"w": jnp.array([0.01, -0.4, 0.5])}
      >>> tx = optreg.soft_share_prior(1e-3, 3)
      >>> updates, state = tx.update(params, tx.init(params), params)
      >>> state.means.shape
      (3,)

    References:
      Nowlan & Hinton, "Simplifying neural networks by soft weight-sharing", Neural Computation 1992.
      Ullrich, Meeds & Welling, "Soft weight-sharing for neural network compression", ICLR 2017.
    """
    config = _TransformConfig.build(weight_decay, num_components, prior, zero_mixing, learn_zero_mixing, optimizer,
                                    init_range, init_std, mode, grid_size, refresh_every)

    @jax.jit
    def initial_mixture(weights: list[jax.Array], zero: jax.Array) -> MixtureParams:
        mixture = _initial_mixture(weights, config.num_components, zero, init_range, init_std)
        return pin(mixture, zero, learn_zero_mixing)

    def init_fn(params: Any) -> MixtureState:
        _tree.check_real(params)
        flags = selected_flags(params, mask)
        leaves, treedef = jax.tree_util.tree_flatten(params)
        weights = [in_mixture_dtype(leaf) for leaf, keep in zip(leaves, flags) if keep]
        mixture = initial_mixture(weights, jnp.asarray(zero_mixing, jnp.float32))
        recorded = jnp.asarray([bool(flag) for flag in flags], jnp.bool_).reshape(len(flags))
        cache = empty_cache(config.num_components, config.grid_size) if mode == "fast" and \
            config.every() > 1 else None
        return MixtureState(_hyper.init_count().count, mixture.means, mixture.log_precisions, mixture.mixing_logits,
                            config.mixture_optimizer().init(mixture), recorded, cache)

    def update_fn(updates: Any, state: MixtureState, params: Optional[Any] = None) -> tuple[Any, MixtureState]:
        params = require_params(params, "soft_share_prior")
        update_leaves, treedef, param_leaves, flags = _tree.flatten_updates(  # None updates pass through
            updates, params, _tree.resolve_mask(mask, params))
        chosen = [index for index, (u, w, keep) in enumerate(zip(update_leaves, param_leaves, flags))
                  if keep and _tree.is_floating(u) and _tree.is_floating(w)]
        mixture = as_mixture(state)
        log_mixing = jax.nn.log_softmax(mixture.mixing_logits)
        learned = log_mixing if learn_zero_mixing else learned_log_mixing(mixture.mixing_logits, zero_mixing, False)
        weights = [in_mixture_dtype(param_leaves[i]) for i in chosen]
        def mixture_step(data: MixtureParams) -> tuple[MixtureParams, Any]:
            grad = mixture_step_gradient(mixture, data, config.prior, zero_mixing, learn_zero_mixing)
            steps, optimizer_state = config.mixture_optimizer().update(grad, state.optimizer, mixture)
            return pin(optax.apply_updates(mixture, steps), zero_mixing, learn_zero_mixing), optimizer_state

        every, cache = config.every(), state.cache
        if mode == "fast" and every > 1 and weights:
            gradients, stepped, optimizer_state, cache = _refreshed_step(
                weights, state, mixture, log_mixing, learned, config.grid_size, every, mixture_step)
        else:
            gradients, data = _gradient_pair(weights, mixture, log_mixing, learned, mode, config.grid_size)
            if every == 1:
                stepped, optimizer_state = mixture_step(data)
            else:
                stepped, optimizer_state = jax.lax.cond(state.count % every == 0, mixture_step,
                                                        lambda _: (mixture, state.optimizer), data)
        tau = _hyper.value_at(weight_decay, state.count).astype(jnp.float32)
        new_leaves = list(update_leaves)
        for index, gradient in zip(chosen, gradients):
            u = update_leaves[index]
            new_leaves[index] = (u + (tau * gradient).astype(u.dtype)).astype(u.dtype)
        new_state = MixtureState(optax.safe_int32_increment(state.count), stepped.means, stepped.log_precisions,
                                 stepped.mixing_logits, optimizer_state, state.mask, cache)
        return jax.tree_util.tree_unflatten(treedef, new_leaves), new_state

    return optax.GradientTransformation(init_fn, update_fn)


class _TransformConfig:
    """The validated, static settings of one :func:`soft_share_prior`.

    ``refresh_every=None`` is resolved (with the default optimizer, whose step sizes depend on it)
    when first needed, at the first ``init`` or ``update``, not at construction: a transform built
    before JAX's backends are configured still follows the backend it runs on.
    """

    def __init__(self, num_components: int, grid_size: int, prior: MixturePrior,
                 optimizer: Optional[optax.GradientTransformation], refresh_every: Optional[int]) -> None:
        self.num_components, self.grid_size, self.prior = num_components, grid_size, prior
        self._optimizer, self._refresh_every = optimizer, refresh_every

    def every(self) -> int:
        """k = ``refresh_every``, the default resolved for JAX's default backend on first use."""
        if self._refresh_every is None:
            self._refresh_every = 1 if jax.default_backend() == _GPU_BACKEND else DEFAULT_REFRESH_EVERY
        return self._refresh_every

    def mixture_optimizer(self) -> optax.GradientTransformation:
        """The given optimizer, or Adam at Ullrich et al.'s step sizes times k (the same pace per update)."""
        if self._optimizer is None:
            self._optimizer = _fields_optimizer([self.every() * rate for rate in DEFAULT_LEARNING_RATES])
        return self._optimizer

    @classmethod
    def build(cls, weight_decay: Any, num_components: Any, prior: Any, zero_mixing: Any, learn_zero_mixing: Any,
              optimizer: Any, init_range: Any, init_std: Any, mode: Any, grid_size: Any,
              refresh_every: Any) -> _TransformConfig:
        _check_weight_decay(weight_decay, _TRANSFORM_SPELLING)
        num_components = _check_int(num_components, "num_components", 2)
        grid_size = _check_int(grid_size, "grid_size", 16)
        if grid_size > MAX_GRID_SIZE:
            raise ValueError(f"grid_size must be <= {MAX_GRID_SIZE} (its table alone would take "
                             f"{16 * grid_size / 2**30:.1f} GiB), got grid_size={grid_size}; the default 4096 is "
                             "accurate to ~1e-4, or use mode='exact'.")
        refresh_every = None if refresh_every is None else _check_int(refresh_every, "refresh_every", 1)
        prior = check_prior(prior)
        _check_fraction(zero_mixing, "zero_mixing")
        if not isinstance(learn_zero_mixing, (bool, np.bool_)):
            raise TypeError(f"learn_zero_mixing must be a bool, got {learn_zero_mixing!r}.")
        if mode not in ("fast", "exact"):
            raise ValueError(f"mode must be 'fast' or 'exact', got mode={mode!r}.")
        _check_init(init_range, init_std)
        if optimizer is not None and not isinstance(optimizer, optax.GradientTransformation):
            raise TypeError(f"optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}.")
        return cls(num_components, grid_size, prior, optimizer, refresh_every)


# ----------------------------------------------------------------------------- the penalty


def _state_mask_flags(state: Any, params: Any) -> Optional[list[Any]]:
    """The state's recorded mask as one flag per leaf of ``params`` (bools or traced 0-d arrays), or None."""
    recorded = getattr(state, "mask", None)
    if recorded is None:
        return None
    return recorded_mask(recorded, params, "soft_share_penalty")


@_legacy_keywords(_PENALTY_SPELLING)
def soft_share_penalty(
    params: Any,
    weight_decay: Hyperparameter,
    state: Optional[MixtureState] = None,
    *,
    prior: MixturePrior = ULLRICH_PRIOR,
    mask: Mask = None,
    count: Any = 0,
) -> jax.Array:
    """Ω = τ·[−Σ_i log p(w_i) − log hyperpriors], the loss-side form of :func:`soft_share_prior`.

    The transform's signature with ``params`` in front and the mixture (``state``) after the
    strength; its gradient in ``params`` is what the transform adds, its gradient in the mixture
    fields of ``state`` is what the transform's mixture step descends (divided by τ). Use the
    transform's ``prior``. The prior on π_0 (``prior.zero_mixing``) is included whenever given.

    Args:
      params: any pytree of arrays (the selected floating leaves are penalised).
      weight_decay: τ >= 0: float, 0-d array or optax schedule (evaluated at ``count``).
      state: a :class:`MixtureState` (e.g. ``soft_share_prior(...).init(params)``).
      prior: the hyperpriors, as given to the transform.
      mask: optax-style mask; None uses the mask the state recorded (every floating leaf if none).
      count: the step at which a schedule is evaluated (the transform's k-th update uses ``count=k``).

    Returns:
      A scalar (float32; float64 for float64 params).

    Raises:
      TypeError: for the old order ``soft_share_penalty(params, state, strength)``.

    Example:
      >>> import jax, jax.numpy as jnp, optreg
      >>> params = {"w": jnp.array([0.01, -0.4, 0.5])}
      >>> state = optreg.soft_share_prior(1e-3, 3).init(params)
      >>> jax.grad(optreg.soft_share_penalty)(params, 1e-3, state)["w"].shape
      (3,)

    References:
      Ullrich, Meeds & Welling, "Soft weight-sharing for neural network compression", ICLR 2017, eq. (5)–(6).
    """
    if isinstance(weight_decay, MixtureState) or state is None or not isinstance(state, MixtureState):
        raise TypeError(
            f"soft_share_penalty takes (params, weight_decay, state): the strength now comes before the "
            f"MixtureState. Call {_PENALTY_SPELLING}."
        )
    _check_weight_decay(weight_decay, _PENALTY_SPELLING)
    prior = check_prior(prior)
    leaves = jax.tree.leaves(params)
    recorded = _state_mask_flags(state, params) if mask is None else None
    flags: Sequence[Any] = selected_flags(params, mask) if recorded is None else [
        flag if isinstance(flag, jax.core.Tracer) else bool(flag) for flag in recorded]
    dtype = jnp.result_type(jnp.float32, *[in_mixture_dtype(leaf).dtype for leaf in leaves if _tree.is_floating(leaf)])
    mixture = as_mixture(state, dtype)
    log_mixing = jax.nn.log_softmax(mixture.mixing_logits)
    total = hyperprior_nll(mixture, log_mixing, prior)
    for leaf, flag in zip(leaves, flags):
        if _tree.is_floating(leaf) and flag is not False:
            term = jnp.sum(negative_log_density(in_mixture_dtype(leaf).astype(dtype), mixture, log_mixing))
            total = total + (term if flag is True else jnp.where(flag, term, 0.0))
    return _hyper.value_at(weight_decay, jnp.asarray(count)).astype(dtype) * total
