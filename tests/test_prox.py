"""The prox operators are the minimisers they claim to be: brute force, optimality, closed forms."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.optimize import brentq

import optreg
from optreg._prox_roots import newton_root
from optreg.prox import prox_elastic_net, prox_group_lasso, prox_lq, tree_prox_lq

BRUTE_FORCE_Q = [0.0, 0.5, 2.0 / 3.0, 1.0, 1.5, 2.0, 3.0, 0.3, 1.3, 2.5]
X_VALUES = np.concatenate([np.linspace(-4.0, 4.0, 33), [0.0, 1e-3, -1e-3, 7.5]])
SCALES = [0.0, 0.05, 0.4, 1.0, 2.5]


def objective(z: np.ndarray, x: float, s: float, q: float) -> np.ndarray:
    """½(z − x)² + (s/q)|z|^q, or ½(z − x)² + s·[z ≠ 0] for q = 0, in float64."""
    z = np.asarray(z, np.float64)
    penalty = s * (z != 0) if q == 0 else (s / q) * np.abs(z) ** q
    return 0.5 * (z - x) ** 2 + penalty


@pytest.mark.parametrize("q", BRUTE_FORCE_Q)
def test_prox_lq_is_the_grid_minimiser(q):
    xs, ss = np.meshgrid(X_VALUES, SCALES)
    x32 = np.asarray(jnp.asarray(xs.ravel(), jnp.float32), np.float64)
    s = ss.ravel()
    got = np.asarray(prox_lq(jnp.asarray(x32, jnp.float32), jnp.asarray(s, jnp.float32), q), np.float64)
    # Grid z = t·x, t ∈ [−0.2, 1.2] (holds 0 and x exactly); spacing <= 1.4·|x|/24000.
    t = np.concatenate([np.linspace(-0.2, 1.2, 24001), [0.0, 1.0]])
    grid = t[None, :] * x32[:, None]
    values = objective(grid, x32[:, None], s[:, None], q)
    best = np.argmin(values, axis=1)
    rows = np.arange(len(x32))
    grid_min = values[rows, best]
    # At least as good as every grid point: the prox is a global minimiser (float32 rounding allowed).
    assert np.all(objective(got, x32, s, q) <= grid_min + 1e-6 * (1.0 + x32**2))
    # And it sits where the grid's minimum is, unless the zero and the nonzero local minima
    # (nearly) tie, which happens only for q < 1 and q = 0 at the threshold.
    at_zero = objective(0.0, x32, s, q)
    nonzero_min = np.min(np.where(grid != 0, values, np.inf), axis=1)
    clear = (q >= 1) | (np.abs(at_zero - nonzero_min) > 1e-4)
    spacing = 1.4 * np.abs(x32) / 24000
    assert np.all(np.abs(got - grid[rows, best])[clear] <= 2 * spacing[clear] + 1e-5)
    assert clear.mean() > 0.9


def _stationary_root(a: float, s: float, q: float) -> float:
    """|prox| from scipy's brentq on t + s·t^(q−1) = a with the threshold test for q < 1."""
    if s == 0 or a == 0:
        return a
    if q < 1:
        beta = (2 * s * (1 - q) / q) ** (1 / (2 - q))
        if a <= beta + s * beta ** (q - 1):
            return 0.0
        return brentq(lambda t: t + s * t ** (q - 1) - a, beta, a, xtol=1e-300, rtol=1e-15)
    return brentq(lambda t: t + s * t ** (q - 1) - a, 0.0, a, xtol=1e-300, rtol=1e-15)


@pytest.mark.parametrize("q", [0.2, 0.5, 2.0 / 3.0, 0.9, 1.2, 1.5, 2.5, 3.0, 6.0])
def test_prox_lq_matches_scipy_root_in_float64(q):
    rng = np.random.default_rng(1)
    a = np.exp(rng.uniform(-6, 6, 300))
    s = np.exp(rng.uniform(-6, 6, 300))
    want = np.array([_stationary_root(ai, si, q) for ai, si in zip(a, s)])
    with jax.enable_x64(True):
        signs = np.where(rng.uniform(size=300) < 0.5, -1.0, 1.0)
        got = np.asarray(prox_lq(jnp.asarray(signs * a), jnp.asarray(s), q))
        generic = np.asarray(newton_root(jnp.asarray(a), jnp.asarray(s), q))
    np.testing.assert_allclose(np.abs(got), want, rtol=1e-11, atol=0)
    assert np.all(got * signs >= 0)
    # The generic Newton path agrees with the closed forms (q = ½, ⅔, 3/2, 3) and scipy alike.
    np.testing.assert_allclose(generic, want, rtol=1e-11, atol=0)


@pytest.mark.parametrize("q", [1.0, 1.5, 3.0, 1.3])
def test_convex_prox_satisfies_optimality_conditions(q):
    rng = np.random.default_rng(2)
    with jax.enable_x64(True):
        x = rng.normal(scale=3.0, size=2000)
        s = np.exp(rng.uniform(-4, 2, 2000))
        z = np.asarray(prox_lq(jnp.asarray(x), jnp.asarray(s), q))
    if q == 1.0:
        # 0 ∈ z − x + s·∂|z|: |x| <= s where z = 0, z − x + s·sign(z) = 0 elsewhere.
        zero = z == 0
        assert np.all(np.abs(x[zero]) <= s[zero] * (1 + 1e-12))
        np.testing.assert_allclose(z[~zero] - x[~zero] + s[~zero] * np.sign(z[~zero]), 0.0, atol=1e-12)
        return
    residual = z - x + s * np.sign(z) * np.abs(z) ** (q - 1)
    np.testing.assert_allclose(residual, 0.0, atol=1e-10 * (1 + np.abs(x)).max())


@pytest.mark.parametrize("q", [1.5, 2.5])
def test_prox_is_stationary_for_the_penalty_that_optreg_defines(q):
    # The loss-side penalty is the source of truth: ∇_z [½‖z − x‖² + lq_penalty(z, q, s)] = 0 at the prox.
    x = jnp.linspace(-3.0, 3.0, 13)
    s = 0.7
    z = prox_lq(x, s, q)
    gradient = jax.grad(lambda z: 0.5 * jnp.sum((z - x) ** 2) + optreg.lq_penalty(z, weight_decay=s, q=q))(z)
    np.testing.assert_allclose(gradient, 0.0, atol=2e-6)


def xu_half_thresholding(x, lam):
    """Xu, Chang, Xu & Zhang 2012, Thm. 1: the minimiser of (z − x)² + λ|z|^½, as printed."""
    threshold = 54 ** (1 / 3) / 4 * lam ** (2 / 3)
    phi = np.arccos(lam / 8 * (np.abs(x) / 3) ** -1.5)
    return np.where(np.abs(x) > threshold, 2 / 3 * x * (1 + np.cos(2 * np.pi / 3 - 2 / 3 * phi)), 0.0)


def cao_two_thirds_thresholding(x, lam):
    """Cao, Sun & Xu 2013, eq. (9)–(10): the minimiser of (z − x)² + λ|z|^⅔, as printed."""
    threshold = 2 / 3 * (3 * lam**3) ** 0.25
    phi = np.arccosh(27 * x**2 / 16 * lam**-1.5)
    big_a = 2 / np.sqrt(3) * lam**0.25 * np.sqrt(np.cosh(phi / 3))
    root = (big_a + np.sqrt(2 * np.abs(x) / big_a - big_a**2)) / 2
    return np.where(np.abs(x) > threshold, np.sign(x) * root**3, 0.0)


def test_half_and_two_thirds_equal_the_papers_formulas_after_rescaling():
    # The papers drop optreg's ½ and 1/q: ½(z − x)² + (s/q)|z|^q = ½·[(z − x)² + (2s/q)|z|^q],
    # so λ = 4s for q = ½ and λ = 3s for q = ⅔.
    rng = np.random.default_rng(4)
    s = np.exp(rng.uniform(-5, 5, 3000))
    x = np.where(rng.uniform(size=3000) < 0.5, -1, 1) * np.exp(rng.uniform(-6, 6, 3000))
    with np.errstate(invalid="ignore", divide="ignore"):
        half = xu_half_thresholding(x, 4 * s)
        two_thirds = cao_two_thirds_thresholding(x, 3 * s)
    with jax.enable_x64(True):
        got_half = np.asarray(prox_lq(jnp.asarray(x), jnp.asarray(s), 0.5))
        got_two_thirds = np.asarray(prox_lq(jnp.asarray(x), jnp.asarray(s), 2 / 3))
    assert np.mean(half == 0) > 0.1 and np.mean(half != 0) > 0.1
    np.testing.assert_allclose(got_half, half, rtol=1e-9, atol=0)
    np.testing.assert_allclose(got_two_thirds, two_thirds, rtol=1e-9, atol=0)


def test_thresholds_and_ties_pick_zero():
    # q = 0: hard threshold at √(2s); at the tie the sparser minimiser 0 is returned.
    assert float(prox_lq(jnp.float32(2.0), 2.0, 0.0)) == 0.0
    assert float(prox_lq(jnp.float32(2.0001), 2.0, 0.0)) == pytest.approx(2.0001)
    # q = 1: soft threshold at s.
    assert float(prox_lq(jnp.float32(1.0), 1.0, 1.0)) == 0.0
    # q = ½ (Xu et al. 2012, λ = 4s): threshold (3/2)(2s)^(2/3), jump to β = (2s)^(2/3) just above it.
    s = 1.0
    tau, beta = 1.5 * (2 * s) ** (2 / 3), (2 * s) ** (2 / 3)
    with jax.enable_x64(True):
        assert float(prox_lq(jnp.float64(tau * (1 - 1e-9)), s, 0.5)) == 0.0
        assert float(prox_lq(jnp.float64(tau * (1 + 1e-9)), s, 0.5)) == pytest.approx(beta, rel=1e-4)
    # q = ⅔ (Cao, Sun & Xu 2013, λ = 3s): threshold 2·s^(3/4), jump to β = s^(3/4).
    s = 0.5
    tau, beta = 2 * s**0.75, s**0.75
    with jax.enable_x64(True):
        assert float(prox_lq(jnp.float64(tau * (1 - 1e-9)), s, 2 / 3)) == 0.0
        assert float(prox_lq(jnp.float64(tau * (1 + 1e-9)), s, 2 / 3)) == pytest.approx(beta, rel=1e-4)


EXTREMES = np.array([0.0, 1e-30, 1e-6, 0.5, 1.0, 3.0, 1e6, 1e30, 3e38], np.float32)


HOSTILE_CASES = [(jnp.float32, q) for q in [0.0, 0.3, 0.5, 2.0 / 3.0, 1.0, 1.3, 1.5, 2.0, 3.0, 5.0]] + [
    (dtype, q) for dtype in (jnp.bfloat16, jnp.float16) for q in [0.5, 2.0 / 3.0, 2.5]
]


@pytest.mark.parametrize("dtype, q", HOSTILE_CASES)
def test_hostile_values_no_nan_no_growth_no_sign_flip(dtype, q):
    x = np.concatenate([EXTREMES, -EXTREMES])
    xs, ss = np.meshgrid(x, EXTREMES)
    info = jnp.finfo(dtype)
    xs = np.clip(xs, -float(info.max), float(info.max))
    ss = np.clip(ss, 0, float(info.max))
    inputs = jnp.asarray(xs, dtype)
    out = prox_lq(inputs, jnp.asarray(ss, dtype), q)
    assert out.dtype == dtype and out.shape == inputs.shape
    got = np.asarray(out, np.float64)
    given = np.asarray(inputs, np.float64)
    assert not np.any(np.isnan(got))
    assert np.all(np.abs(got) <= np.abs(given))
    assert np.all(got * given >= 0)
    # scale = 0 is the identity (for normal numbers), and x = 0 stays 0.
    normal = np.abs(given) >= float(info.tiny)
    zero_scale = (np.asarray(jnp.asarray(ss, dtype), np.float64) == 0) & (normal | (given == 0))
    np.testing.assert_array_equal(got[zero_scale], given[zero_scale])
    assert np.all(got[given == 0] == 0)


def test_jit_vmap_and_traced_scale_agree_with_eager():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(4, 7)), jnp.float32)
    for q in [0.5, 0.7]:
        eager = prox_lq(x, 0.3, q)
        jitted = jax.jit(lambda x, s, q=q: prox_lq(x, s, q))(x, jnp.float32(0.3))
        mapped = jax.vmap(lambda row, q=q: prox_lq(row, 0.3, q))(x)
        np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(mapped, eager, rtol=1e-6, atol=1e-7)
    # An array of scales broadcasts against x.
    per_column = jnp.linspace(0.0, 1.0, 7)
    np.testing.assert_allclose(
        prox_lq(x, per_column, 1.0),
        np.sign(x) * np.maximum(np.abs(x) - np.asarray(per_column), 0.0),
        rtol=1e-6,
        atol=1e-7,
    )


def test_tree_prox_lq_maps_floating_leaves_only():
    tree = {"w": jnp.array([[0.5, -2.0]], jnp.bfloat16), "b": jnp.array([1.5, 0.2]), "step": jnp.array(3)}
    out = tree_prox_lq(tree, 0.5, 1.0)
    np.testing.assert_array_equal(np.asarray(out["w"], np.float32), [[0.0, -1.5]])
    np.testing.assert_allclose(out["b"], [1.0, 0.0])
    assert out["w"].dtype == jnp.bfloat16 and out["step"] is tree["step"]


def test_prox_elastic_net_is_the_grid_minimiser():
    for x in np.linspace(-3, 3, 25):
        for l1, l2 in [(0.0, 0.0), (0.5, 0.0), (0.0, 1.5), (0.7, 0.3), (2.0, 4.0)]:
            z = float(prox_elastic_net(jnp.float32(x), l1, l2))
            grid = np.linspace(-3.5, 3.5, 70001)
            values = 0.5 * (grid - x) ** 2 + l1 * np.abs(grid) + 0.5 * l2 * grid**2
            assert abs(z - grid[np.argmin(values)]) <= 2e-4, (x, l1, l2, z)
    # Exact zeros below the L1 threshold, half precision kept.
    out = prox_elastic_net(jnp.array([0.3, -0.3, 2.0], jnp.bfloat16), 0.5, 1.0)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(out, np.float32), [0.0, 0.0, 0.75])
    # On the support, ∇ [½‖z − x‖² + elastic_net_penalty(z, l1, l2)] = 0; off it |x| <= l1.
    x = jnp.linspace(-3.0, 3.0, 13)
    z = prox_elastic_net(x, 0.4, 1.5)
    gradient = jax.grad(lambda z: 0.5 * jnp.sum((z - x) ** 2) + optreg.elastic_net_penalty(z, l1=0.4, l2=1.5))(z)
    np.testing.assert_allclose(np.asarray(gradient)[np.asarray(z) != 0], 0.0, atol=2e-6)
    assert np.all(np.abs(np.asarray(x)[np.asarray(z) == 0]) <= 0.4)


def test_prox_group_lasso_matches_2d_brute_force_per_row():
    x = np.array([[0.3, -0.2], [1.5, 2.0], [-0.9, 0.4], [0.0, 0.0]], np.float32)
    s = 0.8
    z = np.asarray(prox_group_lasso(jnp.asarray(x), s, axis=-1))
    axis = np.linspace(-2.5, 2.5, 501)
    g0, g1 = np.meshgrid(axis, axis, indexing="ij")
    for row, got in zip(x, z):
        values = 0.5 * ((g0 - row[0]) ** 2 + (g1 - row[1]) ** 2) + s * np.hypot(g0, g1)
        i, j = np.unravel_index(np.argmin(values), values.shape)
        np.testing.assert_allclose(got, [axis[i], axis[j]], atol=0.011)
    # The small rows (norm <= s) are exactly zero.
    np.testing.assert_array_equal(z[[0, 3]], 0.0)


def test_prox_group_lasso_without_axis_takes_the_whole_tree_as_one_group():
    # As jaxopt's prox_group_lasso: ‖x‖ over all leaves = ‖(3, 4, 0, 0)‖ = 5, shrunk by 1 − 1/5.
    tree = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([[0.0, 0.0]]), "n": jnp.array([7])}
    out = prox_group_lasso(tree, 1.0)
    np.testing.assert_allclose(out["a"], [2.4, 3.2], rtol=1e-6)
    np.testing.assert_array_equal(out["b"], 0.0)
    assert out["n"] is tree["n"]
    np.testing.assert_array_equal(prox_group_lasso(tree, 5.0)["a"], 0.0)  # ties go to zero
    cube = jnp.ones((2, 3, 4))
    np.testing.assert_allclose(prox_group_lasso(cube, 1.0, axis=(1, 2)), (1 - 1 / math.sqrt(12)) * cube)


def test_bad_arguments_raise_with_the_name():
    with pytest.raises(ValueError, match="q"):
        prox_lq(jnp.ones(2), 1.0, -1.0)
    with pytest.raises(ValueError, match="scale"):
        prox_lq(jnp.ones(2), -0.1, 1.0)
    with pytest.raises(TypeError, match="x must be a real floating"):
        prox_lq(jnp.ones(2, jnp.int32), 0.1, 1.0)
    with pytest.raises(TypeError, match="static"):
        prox_lq(jnp.ones(2), 0.1, jnp.float32(1.0))
    with pytest.raises(ValueError, match="l2_scale"):
        prox_elastic_net(jnp.ones(2), 0.1, float("nan"))
    with pytest.raises(TypeError, match="axis"):
        prox_group_lasso(jnp.ones(2), 0.1, axis="rows")


def test_tree_prox_lq_takes_a_pytree_of_strengths_a_prefix_and_broadcasting_leaves():
    rng = np.random.default_rng(5)
    tree = {"params": {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32), "b": jnp.asarray(rng.normal(size=4))},
            "step": jnp.array(2)}
    per_column = jnp.linspace(0.1, 1.0, 4)
    scales = {"params": {"w": per_column, "b": 0.5}, "step": 0.0}
    out = tree_prox_lq(tree, scales, 1.0)
    np.testing.assert_allclose(out["params"]["w"], soft(np.asarray(tree["params"]["w"]), np.asarray(per_column)),
                               rtol=1e-6)
    np.testing.assert_allclose(out["params"]["b"], soft(np.asarray(tree["params"]["b"]), 0.5), rtol=1e-6)
    assert out["step"] is tree["step"]
    # a prefix: one value for the whole subtree
    prefix = tree_prox_lq(tree, {"params": 0.3, "step": 0.0}, 2.0)
    np.testing.assert_allclose(prefix["params"]["b"], np.asarray(tree["params"]["b"]) / 1.3, rtol=1e-6)


def soft(x, s):
    return np.sign(x) * np.maximum(np.abs(x) - s, 0.0)


@pytest.mark.parametrize("scale, message", [
    ({"w": 0.1}, "scale must be one number or array for every leaf, or a pytree"),  # a key missing
    ((jnp.ones((3, 4)), jnp.ones(4)), "scale must be one number or array for every leaf, or a pytree"),  # a tuple
    ({"w": jnp.ones(3), "b": 0.1}, r"scale at 'w' has shape \(3,\).*shape \(3, 4\)"),  # does not broadcast
    ({"w": jnp.ones((2, 3, 4)), "b": 0.1}, r"scale at 'w' has shape \(2, 3, 4\).*shape \(3, 4\)"),  # would grow w
    ({"w": -0.1, "b": 0.1}, "scale at 'w' must be finite and >= 0"),
])
def test_a_strength_that_does_not_fit_is_a_value_error_naming_it_and_both_shapes(scale, message):
    tree = {"w": jnp.ones((3, 4)), "b": jnp.ones(4)}
    with pytest.raises(ValueError, match=message):
        tree_prox_lq(tree, scale, 1.0)


def test_strength_errors_of_every_operator_name_the_argument():
    x = jnp.ones((3, 4))
    with pytest.raises(ValueError, match=r"scale has shape \(5,\).*shape \(3, 4\)"):
        prox_lq(x, jnp.ones(5), 1.0)
    with pytest.raises(ValueError, match=r"scale has shape \(2, 3, 4\)"):
        prox_lq(x, jnp.ones((2, 3, 4)), 1.0)  # would broadcast x to a larger shape
    with pytest.raises(TypeError, match="tree_prox_lq"):
        prox_lq({"w": x}, 0.1, 1.0)
    with pytest.raises(TypeError, match="callable"):
        prox_lq(x, lambda count: 0.1, 1.0)
    with pytest.raises(ValueError, match=r"l2_scale at 'b' has shape \(3,\)"):
        prox_elastic_net({"w": x, "b": jnp.ones(4)}, 0.1, {"w": 0.1, "b": jnp.ones(3)})
    with pytest.raises(ValueError, match="l1_scale"):
        prox_elastic_net({"w": x}, [0.1, 0.2, 0.3], 0.1)
    with pytest.raises(ValueError, match=r"per-group shape of x's leaf 'w' of shape \(1, 4\)"):
        prox_group_lasso({"w": x}, {"w": jnp.ones((3, 1))}, axis=0)  # one strength per unit is (1, 4)
    with pytest.raises(ValueError, match="axis=None"):
        prox_group_lasso({"w": x}, {"w": 0.1}, axis=None)
    with pytest.raises(ValueError, match=r"axis=2 does not fit the shape \(3, 4\)"):
        prox_group_lasso(x, 0.1, axis=2)


def test_prox_elastic_net_on_a_pytree_with_pytree_strengths_is_soft_threshold_then_shrink():
    rng = np.random.default_rng(6)
    tree = {"w": jnp.asarray(rng.normal(size=(2, 3))), "b": jnp.asarray(rng.normal(size=3))}
    l1 = {"w": jnp.array([0.1, 0.5, 1.0]), "b": 0.2}
    l2 = {"w": 0.5, "b": jnp.array([0.0, 1.0, 3.0])}
    out = prox_elastic_net(tree, l1, l2)
    for key in tree:
        want = soft(np.asarray(tree[key]), np.asarray(l1[key])) / (1 + np.asarray(l2[key]))
        np.testing.assert_allclose(out[key], want, rtol=1e-6)


def test_moreau_decomposition_against_optax_projections():
    """x = prox_{s·f}(x) + s·P_{B*}(x/s), with B* the dual norm's unit ball (Parikh & Boyd 2014, §2.5):
    soft thresholding pairs with the L∞ ball, the group lasso with the L2 ball (per group)."""
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.normal(scale=2.0, size=(5, 4)), jnp.float32)
    s = 0.8
    np.testing.assert_allclose(x - prox_lq(x, s, 1.0), optax.projections.projection_linf_ball(x, s), atol=2e-6)
    np.testing.assert_allclose(x - prox_group_lasso(x, s), optax.projections.projection_l2_ball(x, s), atol=2e-6)
    per_unit = jax.vmap(lambda column: optax.projections.projection_l2_ball(column, s), in_axes=1, out_axes=1)(x)
    np.testing.assert_allclose(x - prox_group_lasso(x, s, axis=0), per_unit, atol=2e-6)
    tree = {"a": x, "b": x[0] * 3}
    whole, out = optax.projections.projection_l2_ball(tree, 2 * s), prox_group_lasso(tree, 2 * s)
    for key in tree:
        np.testing.assert_allclose(out[key], tree[key] - whole[key], atol=4e-6)


def test_prox_group_lasso_per_unit_of_a_conv_kernel_meets_the_optimality_condition():
    # 0 ∈ z − x + s·∂‖z‖: z_g = x_g − s·z_g/‖z_g‖ on kept groups, ‖x_g‖ <= s on zeroed ones.
    rng = np.random.default_rng(8)
    kernel = rng.normal(size=(3, 3, 2, 6))  # (h, w, in, out): one group per filter
    kernel[..., :2] *= 0.1
    s = np.array([0.5, 0.5, 1.0, 1.0, 2.0, 30.0])  # one strength per filter
    with jax.enable_x64(True):
        z = np.asarray(prox_group_lasso(jnp.asarray(kernel), jnp.asarray(s), axis=(0, 1, 2)))
    norms_x = np.linalg.norm(kernel.reshape(-1, 6), axis=0)
    norms_z = np.linalg.norm(z.reshape(-1, 6), axis=0)
    zeroed = norms_z == 0
    np.testing.assert_array_equal(zeroed, norms_x <= s)
    assert zeroed.sum() == 3 and (~zeroed).sum() == 3
    residual = z - kernel + s * z / np.where(zeroed, 1.0, norms_z)
    np.testing.assert_allclose(residual[..., ~zeroed], 0.0, atol=1e-12)


def test_namespaces_hold_only_the_public_operators_and_old_spellings_still_import():
    import types

    import optreg.projections
    import optreg.prox

    jaxopt_names = {"prox_none", "prox_lasso", "prox_non_negative_lasso", "prox_ridge", "prox_non_negative_ridge",
                    "make_prox_from_projection"}
    for module, names in ((optreg.prox, {"prox_lq", "tree_prox_lq", "prox_elastic_net", "prox_group_lasso"}
                           | jaxopt_names),
                          (optreg.projections, {"projection_lq_ball"})):
        public = {n for n, v in vars(module).items() if not n.startswith("_") and not isinstance(v, types.ModuleType)}
        assert public == names == set(module.__all__)
    assert optreg.prox_lq is optreg.prox.prox_lq and optreg.projection_lq_ball is optreg.projections.projection_lq_ball
    with pytest.warns(DeprecationWarning, match="optreg.projections.projection_lq_ball"):
        from optreg.projection import projection_lq_ball  # noqa: F401
    with pytest.warns(DeprecationWarning, match="optreg.proximal_lq"):
        from optreg.proximal import proximal_lq  # noqa: F401


def test_the_sign_bit_trick_differentiates_like_copysign():
    from optreg._numerics import copysign_nonnegative

    x = jnp.array([-2.0, 3.0, -0.5])
    t = jnp.array([1.0, 2.0, 0.0])
    np.testing.assert_array_equal(copysign_nonnegative(t, x), jnp.copysign(t, x))
    _, tangent = jax.jvp(copysign_nonnegative, (t, x), (jnp.ones(3), jnp.ones(3)))
    np.testing.assert_array_equal(tangent, [-1.0, 1.0, -1.0])
    np.testing.assert_array_equal(jax.grad(lambda t: jnp.sum(copysign_nonnegative(t, x)))(t), [-1.0, 1.0, -1.0])
