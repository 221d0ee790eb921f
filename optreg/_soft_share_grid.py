"""The two ways :func:`optreg.soft_share_prior` computes its step: exact, and tabulated on a grid.

Both return the same pair — the weight gradients g(w_i) = Σ_j r_ij λ_j (w_i − μ_j)
of every selected leaf, and the gradient of Σ_i −log p(w_i) with respect to
(μ, log λ, log π) — so the transform applies either the same way.

* exact: the closed form at every weight, O(N·K) exponentials.
* fast: g is a smooth scalar function of w once the mixture is fixed, so it is
  tabulated with its derivative on G points spanning the weights' range and
  evaluated per weight by cubic Hermite interpolation; the mixture's gradient
  comes from a histogram of the weights on the same grid (each weight counted
  at its nearest grid point). O(G·K + N) per step, no N×K array.

With r = softmax(ℓ), ℓ_j(x) = log π_j + log N(x | μ_j, 1/λ_j) and a_j = λ_j (x − μ_j):

    g = Σ_j r_j a_j,   g' = Σ_j r_j λ_j − Σ_j r_j (a_j − g)²   (since dr_j/dx = r_j (g − a_j)),
    ∂(−log p)/∂μ_j = −r_j a_j,  ∂(−log p)/∂log λ_j = −r_j (1 − a_j (x − μ_j)) / 2,  ∂(−log p)/∂log π_j = −r_j.

References:
  Ullrich, Meeds & Welling, "Soft weight-sharing for neural network compression", ICLR 2017, eq. (3)–(6).
  de Boor, "A Practical Guide to Splines", Springer 1978, ch. IV (piecewise cubic Hermite interpolation).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from optreg import _tree
from optreg._mixture import BIG, MAX, MixtureParams, log_joint, weight_gradient


class Terms(NamedTuple):
    """The mixture evaluated at points x (the weights, or the grid): what g, g' and the mixture's gradient share."""

    responsibility: jax.Array  # (..., K) r_j(x)
    precisions: jax.Array  # (K,) λ_j
    distance: jax.Array  # (..., K) x − μ_j
    pull: jax.Array  # (..., K) a_j = λ_j (x − μ_j)


def terms_at(points: jax.Array, mixture: MixtureParams, log_mixing: jax.Array) -> Terms:
    precisions = jnp.exp(mixture.log_precisions)
    distance = points[..., None] - mixture.means
    return Terms(
        responsibility=jax.nn.softmax(log_joint(points, mixture, log_mixing), axis=-1),
        precisions=precisions,
        distance=distance,
        pull=jnp.clip(precisions * distance, -MAX, MAX),
    )


def mixture_gradient(terms: Terms, counts: jax.Array) -> MixtureParams:
    """Σ_x c_x·∂(−log p(x))/∂(μ, log λ, log π) in closed form (the last field is w.r.t. log π).

    ``counts`` has the shape of the points (1 for every weight in the exact path, the
    histogram in the fast path); the sums run over every axis but the last.
    """
    axes = tuple(range(terms.responsibility.ndim - 1))
    weighted = counts[..., None] * terms.responsibility
    inside = terms.precisions * terms.distance * terms.distance < BIG  # where ℓ_j was capped its derivatives are 0
    return MixtureParams(
        means=-jnp.sum(jnp.where(inside, weighted * terms.pull, 0.0), axis=axes),
        log_precisions=-0.5 * jnp.sum(
            jnp.where(inside, weighted * (1.0 - terms.pull * terms.distance), weighted), axis=axes),
        mixing_logits=-jnp.sum(weighted, axis=axes),
    )


def exact_pair(
    weights: Sequence[jax.Array], mixture: MixtureParams, log_mixing: jax.Array, learned_log_mixing: jax.Array
) -> tuple[list[jax.Array], MixtureParams]:
    """(weight gradients, mixture gradient) from the closed form at every weight.

    The weight gradients use the state's π (``log_mixing``), the mixture's gradient the π the
    mixture update parameterises (``learned_log_mixing``; the same after every update).
    """
    gradients = [weight_gradient(w, mixture, log_mixing) for w in weights]
    total = MixtureParams(*(jnp.zeros_like(field) for field in mixture))
    for w in weights:
        part = mixture_gradient(terms_at(w, mixture, learned_log_mixing), jnp.ones(w.shape, w.dtype))
        total = MixtureParams(*(a + b for a, b in zip(total, part)))
    return gradients, total


# ----------------------------------------------------------------------------- the grid


class Grid(NamedTuple):
    low: jax.Array
    step: jax.Array
    size: int


#: The grid spans the weights' range widened by this fraction on each side, so that weights that move
#: between two refreshes of the table stay on it (beyond it the gradient is extrapolated linearly).
MARGIN = 0.05
#: ... but no farther than this many σ of the widest component beyond the outermost means. Past that
#: every responsibility has settled and g is linear in w, which the end cells' tangent extrapolates;
#: without the bound one far outlier (a weight at 1e4 among weights of size 0.1) stretched the grid
#: until the other weights shared a cell, and their gradients were wrong by up to 90 %.
SUPPORT_SIGMAS = 16.0


def range_of(weights: Sequence[jax.Array], finite: bool = False) -> tuple[jax.Array, jax.Array]:
    """(min, max) over every weight of every leaf, one pass over each leaf (a two-output reduction: on
    XLA:CPU half the time of a min and a max). NaN if a weight is NaN, (inf, −inf) without weights.

    ``finite=True``: over the finite weights only ((inf, −inf) if none), at seven times the cost on
    XLA:CPU (the selects do not fuse into the two-output reduction); for the initial mixture.
    """
    def extremes(w: jax.Array) -> tuple[jax.Array, jax.Array]:
        inf = jnp.array(jnp.inf, w.dtype)
        low, high = (jnp.where(jnp.isfinite(w), w, inf), jnp.where(jnp.isfinite(w), w, -inf)) if finite else (w, w)
        return jax.lax.reduce((low, high), (inf, -inf), lambda a, b: (jnp.minimum(a[0], b[0]), jnp.maximum(a[1], b[1])),
                              tuple(range(w.ndim)))

    lows, highs = zip(*(extremes(w) for w in weights))
    return jnp.min(jnp.stack(lows)), jnp.max(jnp.stack(highs))


def grid_over(weights: Sequence[jax.Array], size: int, mixture: MixtureParams) -> Grid:
    """``size`` points evenly spanning the global [min w, max w] of all selected weights, bounded to
    within :data:`SUPPORT_SIGMAS` σ_max of ``mixture``'s outermost means, plus the margin.

    An infinite weight reaches the bound; a NaN weight makes the grid the bounds themselves.
    """
    low, high = range_of(weights)
    low, high = jnp.where(jnp.isnan(low), -jnp.inf, low), jnp.where(jnp.isnan(high), jnp.inf, high)
    reach = SUPPORT_SIGMAS * jnp.exp(-0.5 * jnp.min(mixture.log_precisions))
    support = (jnp.min(mixture.means) - reach, jnp.max(mixture.means) + reach)
    low, high = (jnp.clip(bound, *support).astype(low.dtype) for bound in (low, high))
    low, high = jnp.minimum(low, high), jnp.maximum(low, high)  # no weight: the mixture's support
    width = jnp.maximum(high - low, 1e-6 * jnp.maximum(1.0, jnp.maximum(jnp.abs(low), jnp.abs(high))))
    low, width = low - MARGIN * width, (1.0 + 2.0 * MARGIN) * width
    return Grid(low, width / (size - 1), size)


def grid_points(grid: Grid) -> jax.Array:
    return grid.low + grid.step * jnp.arange(grid.size, dtype=grid.low.dtype)


def hermite_table(terms: Terms, step: jax.Array) -> jax.Array:
    """Cubic Hermite coefficients of g, shape (4, G + 1): the G − 1 cells of the grid between two
    linear end cells, in closed form.

    On cell k with s ∈ [0, 1]: g ≈ c0 + s·(c1 + s·(c2 + s·c3)), matching g and g' at both
    ends (g' in the variance form, which does not cancel). Autodiff of the same expressions
    costs several times more at G = 4096, K = 17. The end cells hold g and g' at the first and
    the last grid point with c2 = c3 = 0: evaluated at s = the distance from that point (in
    cells) they are the tangent there, so a weight off the grid gets the linear extrapolation by
    the same arithmetic as one on it (no second polynomial, no branch).
    """
    r = terms.responsibility
    value = jnp.clip(jnp.sum(r * terms.pull, axis=-1), -MAX, MAX)
    spread = jnp.minimum(jnp.square(terms.pull - value[:, None]), MAX)
    slope = jnp.sum(r * terms.precisions, axis=-1) - jnp.sum(r * spread, axis=-1)
    slope = jnp.clip(slope * step, -MAX, MAX)
    g0, g1, d0, d1 = value[:-1], value[1:], slope[:-1], slope[1:]
    zero = jnp.zeros([1], value.dtype)
    table = jnp.stack([
        jnp.concatenate([value[:1], g0, value[-1:]]),
        jnp.concatenate([slope[:1], d0, slope[-1:]]),
        jnp.concatenate([zero, 3.0 * (g1 - g0) - 2.0 * d0 - d1, zero]),
        jnp.concatenate([zero, 2.0 * (g0 - g1) + d0 + d1, zero]),
    ])
    # |c_i| <= max/4 keeps Horner's rule for s in [0, 1] finite (only astronomically wide grids get there).
    return jnp.clip(table, -MAX / 4, MAX / 4)


#: How far (in cells) beyond the grid a position is clipped: a finite weight whose distance to the
#: grid overflows float32 still gets a finite position, and a finite extrapolation (never inf · 0; the
#: end cells' c2 = c3 = 0, so Horner's rule never forms s², and s · c1 overflows at worst to ±inf,
#: which the interpolation clips to ±float32 max).
FAR = 1e38


def position_on(w: jax.Array, low: jax.Array, step: jax.Array) -> jax.Array:
    """t = (w − low) / step, the weight's position in cells from the first grid point (clipped to ±FAR).

    A product with 1/step: on XLA:CPU a division per weight costs as much as the rest of the
    interpolation.
    """
    return jnp.clip((w - low) * (1.0 / step), -FAR, FAR)


def cell_of(t: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
    """Cell index k in [0, G − 2] of a position t, and t − k (outside [0, 1] off the grid).

    A truncating cast of the clipped position (= floor, as it is >= 0): cheaper than a floor on XLA:CPU.
    """
    cell = jnp.clip(t, 0.0, size - 2.0).astype(jnp.int32)
    return cell, t - cell


def interpolate(table: jax.Array, w: jax.Array, low: jax.Array, step: jax.Array) -> jax.Array:
    """g(w) from a (4, G + 1) table: the cubic on the weight's cell, the tangent beyond the grid."""
    size = table.shape[1] - 1
    t = position_on(w, low, step)
    cell, _ = cell_of(t, size)
    origin = cell + (t > size - 1.0)  # the first grid point, a cell's left end, or the last grid point
    entry = origin + 1 - (t < 0.0)  # the table's column: 0 and G are the end cells
    s = t - origin  # on the grid, cell_of's t − k to the bit
    # One gather per coefficient, laid out like the weights (no gather across shards; four 1-D gathers
    # are faster on XLA:CPU than one gather of 4-vectors, or two of complex pairs).
    sharding = _tree.sharding_of(entry)
    c0, c1, c2, c3 = (table[i].at[entry].get(out_sharding=sharding) for i in range(4))
    value = c0 + s * (c1 + s * (c2 + s * c3))
    # Dividing by 1 + 0·s (exactly 1 for finite s) makes the result an "expensive" value that XLA
    # writes once rather than recomputes in each consumer. Without it, in chain(soft_share_prior, adam)
    # XLA:CPU evaluates the cubic (and its gathers) again in each of Adam's moment loops.
    return jnp.clip(value / (1.0 + 0.0 * s), -MAX, MAX)


def histogram(cells: Sequence[tuple[jax.Array, jax.Array]], size: int, dtype: jnp.dtype) -> jax.Array:
    """Counts of the weights at their nearest grid point (they sum to N): one scatter-add per leaf.

    The indices keep the weights' shape (no reshape of a sharded array): each
    device counts its own shard and one all-reduce of ``size`` numbers sums them.
    """
    counts = jnp.zeros([size], jnp.int32)
    for cell, s in cells:
        index = jnp.where(jnp.isnan(s), size, cell + (s > 0.5))  # a NaN weight is not counted
        counts = counts.at[index].add(1, mode="drop", out_sharding=_tree.sharding_of(counts))
    return counts.astype(dtype)


class GridCache(NamedTuple):
    """The fast path's table, kept in the state between refreshes: valid for ``mixture`` only."""

    table: jax.Array  # (4, G + 1) Hermite coefficients (see hermite_table)
    low: jax.Array  # the grid's first point
    step: jax.Array  # the grid's spacing
    mixture: MixtureParams  # the mixture the table was built for (NaN: none yet)


def empty_cache(num_components: int, grid_size: int) -> GridCache:
    def nan() -> jax.Array:  # three distinct buffers: a donated state must not hold one buffer twice
        return jnp.full([num_components], jnp.nan, jnp.float32)

    return GridCache(jnp.zeros([4, grid_size + 1], jnp.float32), jnp.zeros([], jnp.float32),
                     jnp.ones([], jnp.float32), MixtureParams(nan(), nan(), nan()))


def table_on(grid: Grid, terms: Terms, mixture: MixtureParams) -> GridCache:
    """The table of ``mixture`` on ``grid`` (``terms``: the mixture at the grid's points, with its own π)."""
    return GridCache(hermite_table(terms, grid.step).astype(jnp.float32), grid.low.astype(jnp.float32),
                     grid.step.astype(jnp.float32), MixtureParams(*(f.astype(jnp.float32) for f in mixture)))


def histogram_gradient(weights: Sequence[jax.Array], grid: Grid, terms: Terms) -> MixtureParams:
    """The mixture's gradient Σ_i ∂(−log p(w_i))/∂(μ, log λ, log π), each weight at its nearest grid point."""
    counts = histogram([cell_of(position_on(w, grid.low, grid.step), grid.size) for w in weights], grid.size,
                       terms.responsibility.dtype)
    return mixture_gradient(terms, counts)


def build_cache(
    weights: Sequence[jax.Array], mixture: MixtureParams, log_mixing: jax.Array, learned_log_mixing: jax.Array,
    grid_size: int,
) -> tuple[GridCache, MixtureParams]:
    """A table over the weights' current range for ``mixture``, and the mixture's gradient from the
    histogram of the weights on the same grid (with the π the mixture update parameterises)."""
    grid = grid_over(weights, grid_size, mixture)
    points = grid_points(grid)
    terms = terms_at(points, mixture, log_mixing)
    data_terms = terms if learned_log_mixing is log_mixing else terms_at(points, mixture, learned_log_mixing)
    return table_on(grid, terms, mixture), histogram_gradient(weights, grid, data_terms)


def cached_gradients(weights: Sequence[jax.Array], cache: GridCache) -> list[jax.Array]:
    """g(w) for every weight from the cached table."""
    return [interpolate(cache.table, w, cache.low, cache.step).astype(w.dtype) for w in weights]


def fast_pair(
    weights: Sequence[jax.Array], mixture: MixtureParams, log_mixing: jax.Array, learned_log_mixing: jax.Array,
    grid_size: int,
) -> tuple[list[jax.Array], MixtureParams]:
    """(weight gradients, mixture gradient) from the grid: the same pair as :func:`exact_pair`, to ~1e-4."""
    cache, data = build_cache(weights, mixture, log_mixing, learned_log_mixing, grid_size)
    return cached_gradients(weights, cache), data
