"""The magnitude t = |prox_{s,q}(x)| of the Lq prox from a = |x| >= 0 and s >= 0, and its partial derivatives.

    prox_{s,q}(x) = argmin_z ½(z − x)² + (s/q)·|z|^q        (q = 0: ½(z − x)² + s·[z ≠ 0])

Closed forms (every case keeps the sign of x and never increases |x|):

    q = 0    t = a if a > √(2s) else 0                              (hard threshold)
    q = ½    0 if a <= (3/2)(2s)^(2/3), else t = a·v², v the largest root of v³ − v + s·a^(−3/2) = 0,
             Xu et al.'s t = (2a/3)(1 + cos(2π/3 − (2/3)·arccos((3√3/2)·s·a^(−3/2))))
    q = ⅔    0 if a <= 2·s^(3/4), else t = a·v³, v the largest root of v⁴ − v + s·a^(−4/3) = 0
             (Cao, Sun & Xu's closed form of that root)
    q = 1    t = max(a − s, 0)                                      (soft threshold)
    q = 3/2  t = a·(2 / (c + √(c² + 4)))²,  c = s/√a                 (a quadratic in √t)
    q = 2    t = a / (1 + s)                                        (shrinkage)
    q = 3    t = 2a / (1 + √(1 + 4sa))

For q = ½ and ⅔ the thresholds are exact. For q = ½ the root is a
polynomial in σ = s·a^(−3/2), fitted once to Xu et al.'s trigonometric form,
then Newton (float32: degree 4 and one step; float64: degree 11 and two); for
q = ⅔ it is 6 monotone Newton steps on the quartic (float64-exact). The tests
check both against the papers' trigonometric / quartic formulas. (XLA's
arccos and cos are ~30× slower than arithmetic on CPU.)

Any other q > 0 solves t + s·t^(q−1) = a by Newton's method from the right
(in log space, where the equation is convex), after the threshold test
a > τ = β + s·β^(q−1), β = (2s(1−q)/q)^(1/(2−q)) when q < 1.

Ties: where the minimiser is not unique (a exactly at the threshold for q = 0
and q < 1) the result is 0, the sparser minimiser.

Derivatives (:func:`magnitude_partials`) come from the implicit function
theorem on t + s·t^(q−1) = a, not from the iterations above, so the speed
tricks never enter a derivative.

References:
  Parikh & Boyd, "Proximal Algorithms", Foundations and Trends in Optimization, 2014 (§6.5).
  Xu, Chang, Xu & Zhang, "L1/2 regularization: a thresholding representation theory and a fast
  solver", IEEE TNNLS 23(7), 2012.
  Cao, Sun & Xu, "Fast image deconvolution using closed-form thresholding formulas of
  L_q (q = 1/2, 2/3) regularization", J. Vis. Commun. Image R. 24(1), 2013.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

#: Log-space Newton steps of the generic (non closed-form) path; a final
#: linear-space step polishes the result to full precision.
NEWTON_STEPS = 8


# --- magnitude of the prox, t = |prox(x)| for a = |x| >= 0 and s >= 0 -------------------------------


def _hard_threshold(a: jax.Array, s: jax.Array) -> jax.Array:
    return jnp.where(a > jnp.sqrt(2.0 * s), a, 0.0)


def _soft_threshold(a: jax.Array, s: jax.Array) -> jax.Array:
    return jnp.maximum(a - s, 0.0)


def _largest_root(sigma: jax.Array, power: int, steps: int) -> jax.Array:
    """Largest root v in (0, 1] of v^power − v + σ = 0, for 0 <= σ below the zero threshold's value.

    The polynomial is convex for v > 0 and equals σ >= 0 at v = 1, so Newton's
    method from v = 1 decreases monotonically onto the root; at the threshold
    its slope is still positive, so convergence is quadratic all the way
    (5–6 steps reach float64 precision). Everything stays in [0, 1]: no overflow.
    """
    return _newton_polish(jnp.ones_like(sigma), sigma, power, steps)


def _newton_polish(v: jax.Array, sigma: jax.Array, power: int, steps: int) -> jax.Array:
    """Newton steps on v^power − v + σ = 0 from a close first guess v."""
    for _ in range(steps):
        v_power = v ** (power - 1)
        v = v - (v * (v_power - 1.0) + sigma) / (power * v_power - 1.0)
    return v


#: Largest σ = s·a^(−3/2) above the q = ½ threshold a = (3/2)(2s)^(2/3).
_HALF_SIGMA_MAX = 1.0 / (2.0 * 1.5**1.5)


#: (polynomial degree, Newton steps) for the q = ½ root per compute dtype. Degree 4 is within
#: 1.4e-4 of the root and one Newton step squares that below float32's rounding (fewer
#: operations than degree 11 alone, which the fused Adam + prox loop is bound by on CPU);
#: float64 starts from degree 11 (1.2e-8) and takes two steps.
_HALF_ROOT_FIT = {np.dtype(np.float32): (4, 1), np.dtype(np.float64): (11, 2)}


@functools.cache
def _half_root_coefficients(degree: int) -> tuple[float, ...]:
    """Power-series coefficients (lowest first) of a Chebyshev fit to the largest root v(σ) of v³ − v + σ.

    Fitted once, in float64, to Xu et al.'s trigonometric form of the root on
    64 Chebyshev points of [0, σ_max]; max relative error 1.4e-4 (degree 4),
    1.2e-8 (degree 11). The root has a square-root branch point at
    σ = 2/(3√3) ≈ 0.385, near σ_max ≈ 0.272, hence the slow decay with degree.
    """
    nodes = 0.5 * _HALF_SIGMA_MAX * (1.0 - np.cos(np.pi * (np.arange(64) + 0.5) / 64))
    c = (1.5 * math.sqrt(3.0)) * nodes
    root = np.sqrt((2.0 / 3.0) * (1.0 + np.cos(2.0 * np.pi / 3.0 - (2.0 / 3.0) * np.arccos(c))))
    fit = np.polynomial.chebyshev.Chebyshev.fit(nodes, root, degree, domain=[0.0, _HALF_SIGMA_MAX])
    return tuple(float(x) for x in fit.convert(kind=np.polynomial.Polynomial, domain=[0.0, _HALF_SIGMA_MAX],
                                               window=[0.0, _HALF_SIGMA_MAX]).coef)


def _polynomial(coefficients: Sequence[float], x: jax.Array) -> jax.Array:
    """Horner's rule, highest coefficient first."""
    result = jnp.full_like(x, coefficients[-1])
    for c in coefficients[-2::-1]:
        result = result * x + c
    return result


def _clamped(a: jax.Array, threshold: jax.Array) -> jax.Array:
    """a raised to the threshold (a well-posed dummy problem below it, whose result is discarded)."""
    info = jnp.finfo(a.dtype)
    return jnp.clip(jnp.maximum(a, threshold), info.tiny, info.max)


def _half_threshold(a: jax.Array, s: jax.Array) -> jax.Array:
    # Xu et al. 2012 solve (z − x)² + λ|z|^½; optreg's ½(z − x)² + 2s|z|^½ is that with λ = 4s.
    # Threshold (54^(1/3)/4)·λ^(2/3) = (3/2)(2s)^(2/3). Above it the stationarity condition
    # t + s·t^(−½) = a with t = a·v² reads v³ − v + σ = 0, σ = s·a^(−3/2) <= 0.272, and t is
    # given by its largest root. Xu's trigonometric form of that root,
    # t = (2a/3)(1 + cos(2π/3 − (2/3)·arccos((3√3/2)·σ))), equals it (see the tests), but XLA's
    # arccos/cos are slow on CPU.
    # Above the threshold σ <= σ_max = 1/(2·(3/2)^(3/2)) ≈ 0.272, where the root is smooth (the double
    # root is at σ = 2/(3√3) ≈ 0.385): a low-degree polynomial in σ, then Newton (_HALF_ROOT_FIT).
    # Only lanes above the threshold are kept, so the others need no clamping (selects, not
    # min/max: IEEE maximum/minimum cost several instructions each on x86).
    threshold = 1.5 * jnp.power(2.0 * s, 2.0 / 3.0)
    # σ = (s/a)/√a, not s/(a·√a): a^(3/2) overflows from a ≈ 5e25 on, where σ need not be small
    # (s ≈ 1e37). Above the threshold s/a < s^(1/3) cannot overflow; the lanes below it (where
    # a = 0 gives inf or NaN) are discarded by the select.
    sigma = (s / a) / jnp.sqrt(a)
    degree, steps = _HALF_ROOT_FIT.get(np.dtype(a.dtype), _HALF_ROOT_FIT[np.dtype(np.float64)])
    v = _newton_polish(_polynomial(_half_root_coefficients(degree), sigma), sigma, power=3, steps=steps)
    return jnp.where(threshold < a, a * (v * v), 0.0)


def _two_thirds_threshold(a: jax.Array, s: jax.Array) -> jax.Array:
    # Cao, Sun & Xu 2013 solve (z − x)² + λ|z|^⅔; optreg's ½(z − x)² + (3s/2)|z|^⅔ is that with λ = 3s.
    # Threshold (2/3)(3λ³)^(1/4) = 2·s^(3/4). Above it t + s·t^(−⅓) = a with t = a·v³ reads
    # v⁴ − v + σ = 0, σ = s·a^(−4/3) <= 2^(−4/3); Cao et al.'s closed form (Ferrari's quartic) of its
    # largest root equals the Newton root used here (see the tests).
    threshold = 2.0 * jnp.power(s, 0.75)
    a_fit = _clamped(a, threshold)
    v = _largest_root((s / a_fit) * jnp.power(a_fit, -1.0 / 3.0), power=4, steps=6)
    return jnp.where(threshold < a, a * v * v * v, 0.0)


def _three_halves_root(a: jax.Array, s: jax.Array) -> jax.Array:
    # t + s·√t = a is a quadratic in u = √t: u = 2a / (s + √(s² + 4a)); written with c = s/√a
    # so that nothing overflows: t = a·(2 / (c + √(c² + 4)))².
    positive = a > 0
    root_a = jnp.sqrt(jnp.where(positive, a, 1.0))
    c = s / root_a
    factor = 2.0 / (c + jnp.hypot(c, 2.0))
    return jnp.where(positive, a * factor * factor, 0.0)


def _cubic_root(a: jax.Array, s: jax.Array) -> jax.Array:
    # t + s·t² = a: t = 2a / (1 + √(1 + 4sa)), overflow-free as a·2/(1 + hypot(1, 2√s√a)).
    return a * (2.0 / (1.0 + jnp.hypot(1.0, 2.0 * jnp.sqrt(s) * jnp.sqrt(a))))


def newton_root(a: jax.Array, s: jax.Array, q: float, steps: int = NEWTON_STEPS) -> jax.Array:
    """t = |prox| for any q > 0 other than 1 (the generic path).

    For q < 1 the zero branch wins where a <= τ (ties go to zero); otherwise t
    is the largest root of h(t) = t + s·t^(q−1) = a. In v = log t the function
    log h = logaddexp(v, log s + (q−1)v) is convex and, right of the root,
    increasing, so Newton's method started right of the root decreases
    monotonically onto it (for q < 1 the iterate is also kept >= log β, where
    the slope is 1 − q > 0). A last Newton step in t itself removes the
    rounding error of exp(v).
    """
    positive = (a > 0) & (s > 0)
    safe_a = jnp.where(positive, a, 1.0)
    safe_s = jnp.where(positive, s, 1.0)
    log_a = jnp.log(safe_a)
    log_s = jnp.log(safe_s)
    if q < 1.0:
        log_beta = (math.log(2.0 * (1.0 - q) / q) + log_s) / (2.0 - q)
        log_tau = log_beta + math.log((2.0 - q) / (2.0 * (1.0 - q)))
        active = positive & (log_a > log_tau)
        v = jnp.maximum(log_a, log_beta)
    else:
        log_beta = None
        active = positive
        v = jnp.minimum(log_a, (log_a - log_s) / (q - 1.0))
    for _ in range(steps):
        b = log_s + (q - 1.0) * v
        residual = jnp.logaddexp(v, b) - log_a
        slope = 1.0 + (q - 2.0) * jax.nn.sigmoid(b - v)
        v = v - residual / slope
        if log_beta is not None:
            v = jnp.maximum(v, log_beta)
    t = jnp.exp(v)
    penalty_term = safe_s * jnp.exp((q - 1.0) * v)  # s·t^(q−1) <= a on the root's side
    slope = 1.0 + (q - 1.0) * penalty_term / t
    polished = t - (t + penalty_term - safe_a) / slope
    t = jnp.where(jnp.isfinite(polished) & (polished > 0), polished, t)
    t = jnp.where(s > 0, t, a)
    return jnp.where(active | (s <= 0), t, 0.0)


def magnitude(a: jax.Array, s: jax.Array, q: float) -> jax.Array:
    """t = |prox_{s,q}(x)| from a = |x|, for a static q (dispatch at trace time)."""
    if q == 0.0:
        return _hard_threshold(a, s)
    if q == 0.5:
        return _half_threshold(a, s)
    if q == 2.0 / 3.0:
        return _two_thirds_threshold(a, s)
    if q == 1.0:
        return _soft_threshold(a, s)
    if q == 1.5:
        return _three_halves_root(a, s)
    if q == 2.0:
        return a / (1.0 + s)
    if q == 3.0:
        return _cubic_root(a, s)
    return newton_root(a, s, q)


def magnitude_partials(a: jax.Array, t: jax.Array, s: jax.Array, q: float) -> tuple[jax.Array, jax.Array]:
    """(∂t/∂a, ∂t/∂s) of t = :func:`magnitude` (a, s, q), from a, the result t and s.

    Where t > 0, t solves t + s·t^(q−1) = a, and the implicit function theorem gives

        ∂t/∂a = 1 / (1 + s(q−1)·t^(q−2)) = t / D,     ∂t/∂s = −t^(q−1) · ∂t/∂a,

    with D = t + (q−1)·s·t^(q−1) = (2−q)·t + (q−1)·a (using s·t^(q−1) = a − t),
    a form that needs no power that could overflow: D >= t for q >= 1 and
    D >= (1 − q/2)·t > 0 on the kept side of the threshold for q < 1, so
    ∂t/∂a lies in [0, 2]. q = 0 keeps t = a above its threshold (∂t/∂a = 1,
    ∂t/∂s = 0). Where t = 0 (thresholded, or a = 0 for q > 1) the result is
    locally constant, except at a = 0 where the limits are used: the identity
    (∂t/∂a = 1) for s = 0 or q > 2, 1/(1 + s) for q = 2, 0 otherwise. The
    thresholds themselves are kinks; there the one-sided derivative of the
    returned branch is given.
    """
    active = t > 0
    if q == 0.0:
        return jnp.where(active, 1.0, 0.0).astype(t.dtype), jnp.zeros_like(t)
    denominator = (2.0 - q) * t + (q - 1.0) * a
    along_a = jnp.where(active, t / jnp.where(active, denominator, 1.0), 0.0)
    if q == 1.0:
        power = jnp.ones_like(t)
    elif q == 2.0:
        power = t
    else:
        power = jnp.power(jnp.where(active, t, 1.0), q - 1.0)
    along_s = jnp.where(active, -power * along_a, 0.0)
    if q > 2.0:
        at_zero = jnp.ones_like(t)
    elif q == 2.0:
        at_zero = 1.0 / (1.0 + s)
    else:
        at_zero = jnp.where(s > 0, 0.0, 1.0)
    along_a = jnp.where(a == 0, at_zero, along_a)
    return along_a, along_s
