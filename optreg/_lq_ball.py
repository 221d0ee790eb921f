"""Euclidean projection onto Lq balls {w : Σ|w|^q <= radius^q}, whole-tree or one ball per slice.

For q = ∞ the projection is a clip (optax's ``projection_linf_ball``); q = 2
is the rescaling x·r/‖x‖₂ (as ``projection_l2_ball``, computed without
overflow); q = 1 uses Michelot's threshold iteration, which equals
``projection_l1_ball`` but needs no sort of the whole tree (so sharded
parameters are never gathered). For any other q >= 1 it is found from the
optimality condition

    P(x) = prox_lq(x, μ, q),  μ >= 0 with Σ|prox_lq(x, μ, q)|^q = radius^q,

by bisection on the multiplier μ: Σ|prox_lq(x, μ, q)|^q decreases
continuously in μ from Σ|x|^q to 0, and μ <= ‖x/radius‖_p (p = q/(q−1), the
dual exponent) is enough to reach the ball. The upper end of the final
bracket is returned, so the result is inside the ball.

Every algorithm works per group (:mod:`optreg._grouping`): the whole tree,
one leaf, or every slice of a leaf over ``axis``.

Derivatives. The iterations (Michelot's ``while_loop``, the bisection) and
the range tricks of q = 2 are never differentiated: a ``jax.custom_jvp``
differentiates the projection implicitly. Outside the ball, P(x)_i =
prox(x_i, μ) with the constraint Σ|P_i|^q = r^q; differentiating both (the
prox's partials come from t + μ·t^(q−1) = |x|, t = |P_i|) gives, with
D_i = (2−q)·t_i + (q−1)·|x_i|, g_i = t_i/D_i, c_i = sign(P_i)·t_i^q/D_i and
W = Σ t_i^(2q−1)/D_i (sums over the group's kept entries),

    dP_i = g_i·dx_i − c_i·(Σ_j c_j·dx_j − r^(q−1)·dr) / W.

μ itself drops out, and every term is scale-free, so it is evaluated on
x/max|x|. For q = 1 this is the derivative of the soft threshold at
Michelot's θ, for q = 2 that of x·r/‖x‖. Inside the ball P is the identity.

References:
  Parikh & Boyd, "Proximal Algorithms", 2014 (§6.5).
  Duchi, Shalev-Shwartz, Singer & Chandra, "Efficient projections onto the l1-ball for learning
  in high dimensions", ICML 2008.
  Michelot, "A finite algorithm for finding the projection of a point onto the canonical simplex
  of R^n", JOTA 1986; Condat, "Fast projection onto the simplex and the l1 ball", Math. Programming 2016.
  Blondel et al., "Efficient and modular implicit differentiation", NeurIPS 2022.
"""

from __future__ import annotations

import functools
import math
import numbers
from functools import reduce
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from optreg._checks import check_exponent
from optreg._grouping import Axis, group_max, group_size, group_sum, norm_pair
from optreg._prox_operators import prox_lq_unchecked

#: Bisection steps on the multiplier; the bracket shrinks to 2^-60 of its start.
BISECTION_STEPS = 60


def check_ball_exponent(q: Any) -> float:
    """Returns q as a float after checking 1 <= q <= ∞ (the balls that are convex)."""
    if isinstance(q, (numbers.Real, np.generic)) and not isinstance(q, bool) and float(q) == math.inf:
        return math.inf
    q = check_exponent(q)
    if q < 1.0:
        raise ValueError(
            f"q must be >= 1 (or math.inf) for a projection: the ball Σ|w|^q <= radius^q is not convex "
            f"for q < 1 and its projection is not unique, got q={q!r}. Use optreg.proximal_lq for q < 1."
        )
    return q


def _power_norm(arrays: Sequence[jax.Array], exponent: float, largest: jax.Array, axis: Axis) -> jax.Array:
    """(Σ|x|^exponent)^(1/exponent) per group, scaled by the group's largest entry to avoid overflow."""
    safe = jnp.where(largest > 0, largest, 1.0)
    total = group_sum([jnp.power(jnp.abs(a) / safe, exponent) for a in arrays], axis)
    return largest * jnp.power(total, 1.0 / exponent)


def _largest(arrays: Sequence[jax.Array], axis: Axis) -> jax.Array:
    return group_max([jnp.abs(a) for a in arrays], axis)


def bisection_projection(
    leaves: Sequence[jax.Array], radius: jax.Array, q: float, axis: Axis = None, steps: int = BISECTION_STEPS
) -> list[jax.Array]:
    """Projects each group onto Σ|w|^q <= radius^q, for any finite q >= 1, by bisection on the multiplier.

    Leaves must already be in their compute dtype. Used by
    :func:`project_ball` for q ∉ {1, 2, ∞}; it is also exact (to the
    bisection's precision) for q = 1 and 2.
    """
    if not leaves:
        return []
    dtype = jnp.result_type(*leaves)
    r = jnp.asarray(radius).astype(dtype)
    positive = r > 0
    safe_r = jnp.where(positive, r, 1.0)
    scaled = [leaf / safe_r for leaf in leaves]
    largest = _largest(scaled, axis)
    inside = positive & (_power_norm(scaled, q, largest, axis) <= 1.0)
    upper = largest if q == 1.0 else _power_norm(scaled, q / (q - 1.0), largest, axis)

    def total_power(multiplier: jax.Array) -> jax.Array:
        return group_sum([jnp.power(jnp.abs(prox_lq_unchecked(y, multiplier, q)), q) for y in scaled], axis)

    def bisect(_: int, bounds: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        low, high = bounds
        middle = 0.5 * (low + high)
        feasible = total_power(middle) <= 1.0
        return jnp.where(feasible, low, middle), jnp.where(feasible, middle, high)

    _, multiplier = jax.lax.fori_loop(0, steps, bisect, (jnp.zeros_like(upper), upper))
    return [
        jnp.where(inside, leaf, jnp.where(positive, prox_lq_unchecked(y, multiplier, q) * r, 0.0))
        for leaf, y in zip(leaves, scaled)
    ]


def l1_threshold_projection(
    leaves: Sequence[jax.Array], radius: jax.Array, axis: Axis = None, max_iterations: int = 200
) -> list[jax.Array]:
    """Projection of each group onto the L1 ball by Michelot's fixed-point iteration on the threshold θ.

    θ₀ = (Σ|x| − r)/n, then θ ← (Σ_{|x|>θ}|x| − r) / #{|x| > θ}: θ increases
    monotonically and reaches the exact threshold of the sort-based algorithm
    (Duchi et al. 2008, as in ``optax.projections.projection_l1_ball``) in
    finitely many steps. Unlike sorting, each step needs only two sums per
    group, so on sharded parameters it is two all-reduces and nothing is
    gathered. The loop runs until every group has settled.
    """
    dtype = jnp.result_type(*leaves)
    r = jnp.asarray(radius).astype(dtype)
    magnitudes = [jnp.abs(leaf) for leaf in leaves]
    total = group_sum(magnitudes, axis)
    count = max(group_size(leaves, axis), 1)
    inside = total <= r

    def above(theta: jax.Array) -> tuple[jax.Array, jax.Array]:
        kept = group_sum([jnp.where(m > theta, m, 0.0) for m in magnitudes], axis)
        number = group_sum([(m > theta).astype(jnp.int32) for m in magnitudes], axis)
        return kept, number

    def step(carry: tuple[jax.Array, jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
        theta, _, iteration = carry
        kept, number = above(theta)
        # θ at or above every |x| (only by rounding, when r is below max|x|'s ulp): stop there
        new_theta = jnp.where(number > 0, (kept - r) / jnp.maximum(number, 1).astype(dtype), theta)
        return new_theta, theta, iteration + 1

    def unfinished(carry: tuple[jax.Array, jax.Array, jax.Array]) -> jax.Array:
        theta, previous, iteration = carry
        return jnp.any(theta > previous) & (iteration < max_iterations)

    start = (total - r) / count
    theta, _, _ = jax.lax.while_loop(unfinished, step, step((start, start - 1.0, jnp.zeros([], jnp.int32))))
    theta = jnp.maximum(theta, 0.0)
    return [
        jnp.where(inside, leaf, jnp.sign(leaf) * jnp.maximum(m - theta, 0.0)) for leaf, m in zip(leaves, magnitudes)
    ]


def _l2_factors(leaves: Sequence[jax.Array], r: jax.Array, axis: Axis) -> tuple[jax.Array, ...]:
    """Factors (f1, f2, f3, m) per group with P(x) = (((x·f1)·f2)·f3)·m = x·min(1, r/‖x‖₂).

    r/‖x‖ itself may leave float range (e.g. ‖x‖ = 1e18, r = 1e-33), and so
    may 1/max|x| (XLA turns a division by it into a multiplication by the
    reciprocal, which flushes to 0 near 3e38). So r/‖x‖ = m·2^E is taken
    apart from the exponents of r, of the scale and of the root: f1, f2, f3
    are powers of two <= 1, each a normal number, whose product is 2^E, and
    m in [0.5, 1) is the only factor that rounds. Every intermediate is at
    most |x|, so nothing overflows; only entries whose projection is itself
    below the smallest normal number flush to zero.

    The norm comes from :func:`optreg._grouping.norm_pair` (one fused pass of
    plain squares unless the range requires the scaled pass, chosen by a
    ``cond`` that passes only per-group values: a branch is compiled, and its
    buffers allocated, on every step whether it runs or not, and on CPU a
    temporary over 32 MB is fresh, page-faulted memory each step).
    """

    def finish(scale: jax.Array, root: jax.Array) -> tuple[jax.Array, ...]:
        one = jnp.ones_like(scale)
        inside = root * scale <= r  # ‖x‖ = scale·root may overflow: then it is outside
        (r_mantissa, r_exponent), (s_mantissa, s_exponent), (n_mantissa, n_exponent) = (
            jnp.frexp(value) for value in (jnp.broadcast_to(r, scale.shape), scale, root)
        )
        mantissa, exponent = jnp.frexp(r_mantissa / jnp.where(inside, 1.0, s_mantissa * n_mantissa))
        # outside, r/‖x‖ = mantissa·2^exponent < 1 with mantissa >= 1/2, so exponent <= 0
        exponent = jnp.where(inside, 0, exponent + r_exponent - s_exponent - n_exponent)
        first = exponent // 3
        second = (exponent - first) // 2
        powers = [jnp.ldexp(one, e) for e in (first, second, exponent - first - second)]
        return (*powers, jnp.where(inside, 1.0, mantissa))

    return norm_pair(leaves, axis, r, finish)  # finish runs once per group, inside the cond


def _power_of_two_factors(largest: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(d1, d2, u1, u2) with d1·d2 = 2^−e and u1·u2 = 2^e, where largest = m·2^e, m in [½, 1).

    Multiplying by d1 and then d2 maps every |x| <= largest into [0, 1]
    exactly (powers of two), and each factor is a normal number. A division
    by ``largest`` itself is not safe: XLA turns a division by a broadcast
    scalar into a multiplication by its reciprocal, which flushes to 0 for
    largest > 2^126 (so x/3.4e38 became 0).
    """
    finite = (largest > 0) & jnp.isfinite(largest)
    _, exponent = jnp.frexp(jnp.where(finite, largest, 1.0))
    exponent = jnp.where(finite, exponent, 0)
    half = exponent // 2
    one = jnp.ones_like(largest)
    return (jnp.ldexp(one, -half), jnp.ldexp(one, half - exponent), jnp.ldexp(one, half),
            jnp.ldexp(one, exponent - half))


def _project_scaled(leaves: Sequence[jax.Array], r: jax.Array, q: float, axis: Axis) -> list[jax.Array]:
    """Working with y = x·2^−e, 2^e >= max|x| (so |y| <= 1) keeps every norm finite for any magnitude;
    a radius below max|x|'s rounding (r/max|x| < eps) projects to 0; a last rescale by
    min(1, r/‖z‖_q) absorbs the rounding of x − θ when |x| ≫ r, so the output is inside the ball."""
    dtype = jnp.result_type(*leaves)
    down1, down2, up1, up2 = _power_of_two_factors(_largest(leaves, axis))
    scaled = [(leaf * down1) * down2 for leaf in leaves]
    r_scaled = (r * down1) * down2
    inside = _power_norm(scaled, q, _largest(scaled, axis), axis) <= r_scaled
    negligible = r_scaled < jnp.finfo(dtype).eps
    safe_r = jnp.where(negligible, 1.0, r_scaled)
    if q == 1.0:
        projected = l1_threshold_projection(scaled, safe_r, axis)
    else:
        projected = bisection_projection(scaled, safe_r, q, axis)
    norm = _power_norm(projected, q, _largest(projected, axis), axis)
    shrink = jnp.where(norm > safe_r, safe_r / jnp.where(norm > 0, norm, 1.0), 1.0)
    return [
        jnp.where(inside, leaf, jnp.where(negligible, 0.0, ((z * shrink) * up1) * up2))
        for leaf, z in zip(leaves, projected)
    ]


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _project_finite(leaves: list[jax.Array], r: jax.Array, q: float, axis: Axis) -> list[jax.Array]:
    """The projection for a finite q >= 1 (r >= 0); derivatives by implicit differentiation (module docstring)."""
    if q == 2.0:
        factors = _l2_factors(leaves, r, axis)
        return [reduce(jnp.multiply, factors, leaf) for leaf in leaves]
    return _project_scaled(leaves, r, q, axis)


@_project_finite.defjvp
def _project_finite_jvp(q: float, axis: Axis, primals: tuple[Any, Any], tangents: tuple[Any, Any]) -> tuple[Any, Any]:
    (leaves, r), (d_leaves, dr) = primals, tangents
    projected = _project_finite(leaves, r, q, axis)
    down1, down2, _, _ = _power_of_two_factors(_largest(leaves, axis))
    changed = group_sum([(z != x).astype(jnp.int32) for z, x in zip(projected, leaves)], axis) > 0
    gains: list[jax.Array] = []
    weights: list[jax.Array] = []
    total = jnp.zeros_like(down1)
    for x, z in zip(leaves, projected):
        t, a = (jnp.abs(z) * down1) * down2, (jnp.abs(x) * down1) * down2
        active = t > 0
        safe_t = jnp.where(active, t, 1.0)
        denominator = jnp.where(active, (2.0 - q) * t + (q - 1.0) * a, 1.0)
        gains.append(jnp.where(active, t / denominator, 0.0))
        weights.append(jnp.where(active, jnp.sign(z) * jnp.power(safe_t, q) / denominator, 0.0))
        total = total + group_sum([jnp.where(active, jnp.power(safe_t, 2.0 * q - 1.0) / denominator, 0.0)], axis)
    along = group_sum([c * d for c, d in zip(weights, d_leaves)], axis)
    rho = (r * down1) * down2
    radial = jnp.ones_like(rho) if q == 1.0 else jnp.power(rho, q - 1.0)
    positive = total > 0
    multiplier = jnp.where(positive, (along - radial * dr) / jnp.where(positive, total, 1.0), 0.0)
    return projected, [jnp.where(changed, g * d - c * multiplier, d) for g, c, d in zip(gains, weights, d_leaves)]


@functools.partial(jax.jit, static_argnames=("q", "axis"))
def project_ball(leaves: list[jax.Array], r: jax.Array, q: float, axis: Axis = None) -> list[jax.Array]:
    """Projection of each group onto the Lq ball of radius r >= 0 (leaves in their compute dtype)."""
    if not leaves:
        return []
    r = jnp.asarray(r).astype(jnp.result_type(*leaves))
    if q == math.inf:
        return [jnp.clip(x, -r, r) for x in leaves]  # optax's projection_linf_ball, for any grouping
    return _project_finite(list(leaves), r, q, axis)
