"""Projection onto Lq balls: optax for q = 1, 2, ∞; scipy's SLSQP for other q; the transform contract."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.optimize import minimize

import optreg
from optreg._lq_ball import bisection_projection
from optreg.projections import projection_lq_ball

OPTAX_BALLS = {
    1.0: optax.projections.projection_l1_ball,
    2.0: optax.projections.projection_l2_ball,
    math.inf: optax.projections.projection_linf_ball,
}


def random_tree(seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return {
        "dense": {"kernel": jnp.asarray(scale * rng.normal(size=(3, 4)), jnp.float32)},
        "bias": jnp.asarray(scale * rng.normal(size=5), jnp.float32),
    }


@pytest.mark.parametrize("q", [1.0, 2.0, math.inf])
def test_transform_equals_optax_projection_of_the_whole_tree(q):
    params, grads = random_tree(0), random_tree(1, scale=0.5)
    stepped = jax.tree.map(lambda w, g: w - 0.5 * g, params, grads)
    for radius in (0.3, 100.0):
        tx = optax.chain(optax.sgd(0.5), optreg.project_lq_ball(radius, q))
        updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
        want = OPTAX_BALLS[q](stepped, radius)
        got = optax.apply_updates(params, updates)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("q", [1.0, 2.0])
def test_bisection_path_reproduces_optax_for_q_1_and_2(q):
    tree = random_tree(2, scale=2.0)
    project = jax.jit(bisection_projection, static_argnames="q")
    for radius in (0.1, 1.0, 5.0):
        got = project(jax.tree.leaves(tree), jnp.float32(radius), q=q)
        want = jax.tree.leaves(OPTAX_BALLS[q](tree, radius))
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def slsqp_projection(x, radius, q):
    constraint = {
        "type": "ineq",
        "fun": lambda z: radius**q - np.sum(np.abs(z) ** q),
        "jac": lambda z: -q * np.sign(z) * np.abs(z) ** (q - 1),
    }
    start = x * 0.5 * radius / np.sum(np.abs(x) ** q) ** (1 / q)
    result = minimize(
        lambda z: 0.5 * np.sum((z - x) ** 2),
        start,
        jac=lambda z: z - x,
        constraints=[constraint],
        method="SLSQP",
        options={"ftol": 1e-12, "maxiter": 1000},
    )
    # Status 8 ("positive directional derivative") is SLSQP stopping at machine precision.
    assert result.success or result.status == 8, result.message
    assert np.sum(np.abs(result.x) ** q) <= radius**q * (1 + 1e-9)
    return result.x


@pytest.mark.parametrize("q", [1.2, 1.5, 3.0, 4.0])
def test_other_q_matches_scipy_slsqp(q):
    rng = np.random.default_rng(3)
    for trial in range(3):
        x = rng.normal(scale=2.0, size=5)
        radius = 1.0 + trial
        want = slsqp_projection(x, radius, q)
        with jax.enable_x64(True):
            got = np.asarray(projection_lq_ball(jnp.asarray(x), radius, q))
        np.testing.assert_allclose(got, want, atol=1e-6)
        assert np.sum(np.abs(got) ** q) <= radius**q * (1 + 1e-12)


def test_inside_the_ball_nothing_changes_and_radius_zero_gives_zeros():
    tree = random_tree(4, scale=0.1)
    for q in (1.0, 1.5, 2.0, 3.0, math.inf):
        inside = projection_lq_ball(tree, 1e3, q)
        for g, w in zip(jax.tree.leaves(inside), jax.tree.leaves(tree)):
            np.testing.assert_array_equal(g, w)
        collapsed = projection_lq_ball(tree, 0.0, q)
        for leaf in jax.tree.leaves(collapsed):
            np.testing.assert_array_equal(leaf, 0.0)
        zeros = projection_lq_ball(jax.tree.map(jnp.zeros_like, tree), 0.0, q)
        assert not any(np.any(np.isnan(leaf)) for leaf in jax.tree.leaves(zeros))


def test_mask_excludes_leaves_from_the_norm_and_the_projection():
    params, grads = random_tree(5, scale=3.0), random_tree(6)
    mask = {"dense": {"kernel": True}, "bias": False}
    tx = optax.chain(optax.sgd(0.1), optreg.project_lq_ball(1.0, 2.0, mask=mask))
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["bias"], -0.1 * grads["bias"], rtol=1e-6)
    kernel = params["dense"]["kernel"] - 0.1 * grads["dense"]["kernel"]
    np.testing.assert_allclose(
        params["dense"]["kernel"] + updates["dense"]["kernel"],
        optax.projections.projection_l2_ball(kernel, 1.0),
        rtol=1e-6,
        atol=1e-6,
    )


def test_per_leaf_projects_every_leaf_onto_its_own_ball():
    params = random_tree(7, scale=3.0)
    grads = jax.tree.map(jnp.zeros_like, params)
    for q in (2.0, 3.0):
        tx = optreg.project_lq_ball(1.5, q, per_leaf=True)
        updates, _ = tx.update(grads, tx.init(params), params)
        for leaf in jax.tree.leaves(optax.apply_updates(params, updates)):
            norm = float(jnp.sum(jnp.abs(leaf) ** q) ** (1 / q))
            assert norm == pytest.approx(1.5, rel=1e-5)
    tx = optreg.project_lq_ball(1.5, 2.0, per_leaf=True)
    updates, _ = tx.update(grads, tx.init(params), params)
    for got, leaf in zip(jax.tree.leaves(optax.apply_updates(params, updates)), jax.tree.leaves(params)):
        np.testing.assert_allclose(got, optax.projections.projection_l2_ball(leaf, 1.5), rtol=1e-6, atol=1e-7)


def test_radius_schedule_and_inject_hyperparams():
    params = {"w": jnp.array([3.0, 4.0])}
    grads = {"w": jnp.zeros(2)}
    schedule = optax.linear_schedule(5.0, 1.0, transition_steps=4)
    tx = optreg.project_lq_ball(schedule, 2.0)
    state = tx.init(params)
    for k in range(5):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        assert float(jnp.linalg.norm(params["w"])) == pytest.approx(5.0 - k, rel=1e-6)
    injected = optax.inject_hyperparams(optreg.project_lq_ball, static_args=("q", "per_leaf"))(radius=0.5, q=3.0)
    state = injected.init(params)
    update = jax.jit(injected.update)
    for radius in (0.5, 0.25):
        state.hyperparams["radius"] = jnp.asarray(radius)
        updates, _ = update(grads, state, params)
        projected = optax.apply_updates(params, updates)["w"]
        assert float(jnp.sum(jnp.abs(projected) ** 3)) == pytest.approx(radius**3, rel=1e-4)


def test_projected_adam_keeps_the_constraint_and_half_precision():
    params = {"w": jnp.asarray(np.random.default_rng(8).normal(size=(4, 4)), jnp.bfloat16)}
    target = jax.tree.map(lambda w: 10.0 * w.astype(jnp.float32), params)
    tx = optax.chain(optax.adam(0.1), optreg.project_lq_ball(2.0, 1.5))
    state = tx.init(params)

    @jax.jit
    def step(p, s):
        grads = jax.tree.map(lambda w, t: (w.astype(jnp.float32) - t).astype(w.dtype), p, target)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s

    for _ in range(5):
        params, state = step(params, state)
        assert params["w"].dtype == jnp.bfloat16
        norm = float(jnp.sum(jnp.abs(params["w"].astype(jnp.float32)) ** 1.5) ** (1 / 1.5))
        assert norm <= 2.0 * 1.01  # bf16 rounding of the projected point


@pytest.mark.parametrize("q", [2.0, 3.0])
def test_vmap_over_parameter_vectors(q):
    tx = optreg.project_lq_ball(1.0, q)
    vectors = jnp.asarray(np.random.default_rng(9).normal(size=(5, 3)), jnp.float32)
    vectors = vectors.at[3].multiply(1e-25)  # q = 2: Σw² underflows, the overflow-safe branch for this row only
    batched = jax.vmap(lambda w: tx.update(jnp.zeros_like(w), tx.init(w), w)[0])(vectors)
    for row in range(5):
        one = projection_lq_ball(vectors[row], 1.0, q)
        np.testing.assert_allclose(vectors[row] + batched[row], one, rtol=1e-5, atol=1e-6)
    # the function itself also where the row is shrunk (w + (P(w) − w) would round P(w) away at 1e25)
    vectors = vectors.at[4].multiply(1e25)
    batched = jax.vmap(lambda w: projection_lq_ball(w, 1.0, q))(vectors)
    for row in range(5):
        np.testing.assert_allclose(batched[row], projection_lq_ball(vectors[row], 1.0, q), rtol=1e-5, atol=0)


@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e25])
def test_l2_projection_differentiates_like_optax(scale):
    """jax.grad through the q = 2 projection (plain and overflow-safe branches) equals optax's."""
    tree = random_tree(3, scale=scale)

    def loss(project, unit):
        return lambda t: jnp.sum(jnp.sin(project(t)["dense"]["kernel"] / unit) * jnp.arange(4.0))

    # P is 1-homogeneous: with x = scale·u, d/dx of sin(P(x)/scale) is d/du of sin(P(u)), over scale.
    # optax's squared norm under- or overflows at 1e±30, so its gradient comes from the unit case.
    ours = jax.grad(loss(lambda t: projection_lq_ball(t, 0.5 * scale, 2.0), scale))(tree)
    unit = jax.tree.map(lambda x: x / scale, tree)
    theirs = jax.grad(loss(lambda t: optax.projections.projection_l2_ball(t, 0.5), 1.0))(unit)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        np.testing.assert_allclose(np.asarray(a, np.float64) * scale, b, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("values, radius", [
    ([3.4e38, -3.4e38, 1e30], 1.0),  # ‖x‖ overflows and r/‖x‖ is subnormal
    ([3.4e38, -3.4e38, 1e30], 3e38),
    ([1e-30, -2e-30, 0.0], 1e-31),  # Σx² is below the smallest normal number
    ([3e-20, 4e-20], 1e-20),
    ([0.0, -0.0, 1.09e18], 1.88e-33),  # Σx² is ordinary but r/‖x‖ = 2e-51 is not a float32
    ([3.4e38, 1.0], 3.4e38),  # inside the ball next to float32's largest number
])
def test_l2_projection_at_the_ends_of_float32(values, radius):
    x = np.asarray(values, np.float64)
    largest = np.abs(x).max()
    norm = largest * np.sqrt(np.sum((x / largest) ** 2))
    expected = x * min(1.0, radius / norm)
    got = projection_lq_ball({"w": jnp.asarray(values, jnp.float32)}, radius, 2.0)["w"]
    np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=4e-7, atol=1e-45)


def test_l2_projection_after_adam_writes_one_temporary_copy_at_most():
    """On CPU a temporary buffer of some MB is fresh memory each step; its page faults once made
    adam + project_lq_ball(q=2) 2.3x Adam instead of 1.5x. Only w + u may be written (XLA keeps it
    rather than recompute Adam's update twice); the overflow-safe branch is compiled (and its
    buffers allocated) every step, so it must not write a scaled copy of the weights as well."""
    tree = {"w": jnp.ones((1000, 1000), jnp.float32), "b": jnp.ones(1000, jnp.float32)}
    tx = optax.chain(optax.adam(1e-3), optreg.project_lq_ball(1.0, 2.0))

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(tree, tx.init(tree), tree).compile()
    one_copy = 4 * 1000 * 1000
    assert compiled.memory_analysis().temp_size_in_bytes < 1.1 * one_copy


def test_bad_arguments_raise_at_construction():
    with pytest.raises(ValueError, match="q must be >= 1"):
        optreg.project_lq_ball(1.0, 0.5)
    with pytest.raises(ValueError, match="radius"):
        optreg.project_lq_ball(-1.0, 2.0)
    with pytest.raises(TypeError, match="per_leaf"):
        optreg.project_lq_ball(1.0, 2.0, per_leaf="yes")
    with pytest.raises(TypeError, match="radius"):
        projection_lq_ball(jnp.ones(3), lambda count: 1.0, 2.0)
    with pytest.raises(ValueError, match="params"):
        tx = optreg.project_lq_ball(1.0, 2.0)
        tx.update(jnp.ones(2), tx.init(jnp.ones(2)))


def l1_projection_float64(x, radius):
    """Duchi et al. (2008) sort-based L1-ball projection in float64 (reference)."""
    magnitude = np.abs(x.astype(np.float64))
    if magnitude.sum() <= radius:
        return x.astype(np.float64)
    s = np.sort(magnitude)[::-1]
    excess = np.cumsum(s) - radius
    rho = np.nonzero(s - excess / np.arange(1, s.size + 1) > 0)[0].max()
    return np.sign(x) * np.maximum(magnitude - excess[rho] / (rho + 1), 0.0)


@pytest.mark.parametrize("seed", range(4))
def test_l1_threshold_iteration_as_accurate_as_optax_sort(seed):
    """Ties, zeros, heavy tails and tiny radii: both float32 projections within float32 rounding of float64."""
    rng = np.random.default_rng(seed)
    x = rng.standard_cauchy(2000).astype(np.float32)
    x[:100] = 0.0
    x[100:300] = 1.5  # many ties
    tree = {"a": jnp.asarray(x[:1500].reshape(30, 50)), "b": jnp.asarray(x[1500:])}
    tolerance = 8 * np.finfo(np.float32).eps * np.abs(x).max()
    for radius in (1e-3, 1.0, 37.0, float(np.abs(x).sum()) * 0.999):
        reference = l1_projection_float64(x, radius)
        ours = projection_lq_ball(tree, radius, 1.0)
        for projected in (ours, optax.projections.projection_l1_ball(tree, radius)):
            flat = np.concatenate([np.ravel(projected["a"]), np.ravel(projected["b"])])
            np.testing.assert_allclose(flat, reference, rtol=0, atol=tolerance)


def per_slice(project, x, axis):
    """optax's whole-array projection applied to every column (axis=0) or row (axis=1) of a matrix."""
    return jax.vmap(project, in_axes=1 - axis, out_axes=1 - axis)(x)


@pytest.mark.parametrize("q", [1.0, 2.0, math.inf])
@pytest.mark.parametrize("axis", [0, 1])
def test_per_unit_balls_equal_optax_projections_of_each_slice(q, axis):
    x = jnp.asarray(np.random.default_rng(10).normal(scale=2.0, size=(6, 5)), jnp.float32)
    for radius in (0.5, 3.0):
        want = per_slice(lambda v, r=radius: OPTAX_BALLS[q](v, r), x, axis)
        np.testing.assert_allclose(projection_lq_ball(x, radius, q, axis=axis), want, rtol=1e-5, atol=1e-6)
        tx = optax.chain(optax.sgd(1.0), optreg.project_lq_ball(radius, q, axis=axis))
        updates, _ = tx.update(jnp.zeros_like(x), tx.init(x), x)
        np.testing.assert_allclose(x + updates, want, rtol=1e-5, atol=1e-6)


def test_per_unit_ball_is_keras_max_norm():
    """Keras ``MaxNorm(m, axis=0)``: w·clip(‖w‖, 0, m)/‖w‖ per column (its documented formula, without ε)."""
    kernel = np.random.default_rng(11).normal(size=(8, 5)) * np.array([0.1, 0.5, 1.0, 2.0, 4.0])
    m = 2.0
    norms = np.linalg.norm(kernel, axis=0, keepdims=True)
    keras = kernel * np.clip(norms, 0, m) / norms
    params = {"Dense_0": {"kernel": jnp.asarray(kernel, jnp.float32), "bias": jnp.ones(5, jnp.float32) * 9}}
    kernels_only = {"Dense_0": {"kernel": True, "bias": False}}
    tx = optreg.project_lq_ball(m, q=2.0, axis=0, mask=kernels_only)
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["Dense_0"]["kernel"], keras, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(new["Dense_0"]["bias"], 9.0)


def test_per_unit_radius_array_and_conv_filters():
    rng = np.random.default_rng(12)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32)
    radii = jnp.array([0.5, 1.0, 2.0, 100.0])  # one per output channel, shape broadcasting to (1, 1, 1, 4)
    out = projection_lq_ball(kernel, radii, 2.0, axis=(0, 1, 2))
    norms = np.linalg.norm(np.asarray(out).reshape(-1, 4), axis=0)
    original = np.linalg.norm(np.asarray(kernel).reshape(-1, 4), axis=0)
    np.testing.assert_allclose(norms, np.minimum(original, radii), rtol=1e-6)
    with pytest.raises(ValueError, match=r"radius has shape \(3,\).*per-slice shape of the leaf of shape \(1, 1, 1, 4"):
        projection_lq_ball(kernel, jnp.ones(3), 2.0, axis=(0, 1, 2))
    with pytest.raises(ValueError, match="one number with axis=None"):
        projection_lq_ball(kernel, radii, 2.0)


@pytest.mark.parametrize("q", [1.5, 3.0])
def test_per_unit_balls_for_other_q_match_scipy_per_column(q):
    x = np.random.default_rng(13).normal(scale=2.0, size=(5, 3))
    with jax.enable_x64(True):
        got = np.asarray(projection_lq_ball(jnp.asarray(x), 1.5, q, axis=0))
    for column in range(3):
        np.testing.assert_allclose(got[:, column], slsqp_projection(x[:, column], 1.5, q), atol=1e-6)


def test_axis_that_does_not_fit_a_selected_leaf_is_an_error_at_init_naming_it():
    params = {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)}
    with pytest.raises(ValueError, match=r"axis=1 does not fit the shape \(4,\) of the leaf 'bias'"):
        optreg.project_lq_ball(1.0, axis=1).init(params)
    optreg.project_lq_ball(1.0, axis=1, mask={"kernel": True, "bias": False}).init(params)  # masked out: fine
    with pytest.raises(TypeError, match="axis must be None, an int or a tuple"):
        optreg.project_lq_ball(1.0, axis="rows")


def test_project_applies_any_optax_projection_as_a_constraint():
    rng = np.random.default_rng(14)
    params = {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32), "b": jnp.asarray(rng.normal(size=4))}
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
    stepped = jax.tree.map(lambda p, g: p - 0.5 * g, params, grads)
    cases = [
        (optax.projections.projection_non_negative, None),
        (lambda t: optax.projections.projection_box(t, optax.tree.full_like(t, -0.3), optax.tree.full_like(t, 0.4)),
         None),
        (lambda t: optax.projections.projection_l2_sphere(t, 2.0), None),
        (optax.projections.projection_simplex, {"w": True, "b": False}),
    ]
    for projection, mask in cases:
        tx = optax.chain(optax.sgd(0.5), optreg.project(projection, mask=mask))
        updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
        new = optax.apply_updates(params, updates)
        if mask is None:
            want = projection(stepped)
        else:
            want = {"w": projection(stepped["w"]), "b": stepped["b"]}
        for key in params:
            np.testing.assert_allclose(new[key], want[key], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(jnp.sum(new["w"])), 1.0, rtol=1e-5)  # the simplex, on the selected leaf


def test_project_sees_the_selected_leaves_together():
    """A whole-tree projection acts on the selected leaves only: their joint norm, not the bias's."""
    params = {"w": jnp.array([3.0, 4.0]), "b": jnp.array([100.0])}
    tx = optreg.project(lambda t: optax.projections.projection_l2_ball(t, 1.0), mask={"w": True, "b": False})
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["w"], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(new["b"], 100.0)


def test_project_rejects_what_is_not_a_projection():
    with pytest.raises(TypeError, match="projection must be a function"):
        optreg.project({"w": 1.0})
    tx = optreg.project(lambda t: jax.tree.map(lambda x: x[:1], t))
    params = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match=r"project: the new value of 'w' has shape \(1,\)"):
        tx.update(params, tx.init(params), params)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, tx.init(params))


@pytest.mark.parametrize("make", [
    lambda: optreg.project_lq_ball(1.0, 2.0),
    lambda: optreg.project_lq_ball(1.0, 1.5, per_leaf=True),
    lambda: optreg.project_lq_ball(1.0, 2.0, axis=0),
    lambda: optreg.project(optax.projections.projection_non_negative),
    lambda: optreg.proximal_group_lasso(0.1, 1.0),
], ids=["ball", "ball per leaf", "ball per unit", "project", "group lasso whole tree"])
def test_none_updates_pass_through_as_in_optax(make):
    params = {"w": jnp.array([[3.0, -4.0], [1.0, 2.0]]), "frozen": jnp.array([[5.0, 5.0]])}
    updates = {"w": jnp.array([[0.1, 0.1], [0.1, 0.1]]), "frozen": None}
    tx = make()
    new_updates, _ = jax.jit(tx.update)(updates, tx.init(params), params)
    assert new_updates["frozen"] is None
    full, _ = tx.update({"w": updates["w"]}, tx.init({"w": params["w"]}), {"w": params["w"]})
    np.testing.assert_allclose(new_updates["w"], full["w"], rtol=1e-6, atol=1e-6)


def test_a_radius_that_turns_negative_at_run_time_gives_zero_never_flipped_weights():
    params = {"w": jnp.array([3.0, -4.0, 0.5])}
    schedule = optax.linear_schedule(1.0, -1.0, transition_steps=2)  # 1, 0, -1
    for q in (1.0, 1.5, 2.0, math.inf):
        tx = optreg.project_lq_ball(schedule, q)
        state = tx.init(params)
        for _ in range(3):
            updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
        np.testing.assert_array_equal(optax.apply_updates(params, updates)["w"], 0.0)
        injected = optax.inject_hyperparams(optreg.project_lq_ball, static_args=("q",))(radius=1.0, q=q)
        state = injected.init(params)
        state.hyperparams["radius"] = jnp.asarray(-2.0)
        updates, _ = jax.jit(injected.update)(jax.tree.map(jnp.zeros_like, params), state, params)
        np.testing.assert_array_equal(optax.apply_updates(params, updates)["w"], 0.0)
        traced = jax.jit(lambda r, q=q: projection_lq_ball(params, r, q))(-1.0)
        np.testing.assert_array_equal(traced["w"], 0.0)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("q", [1.0, 1.5, 2.0, 3.0, math.inf])
@pytest.mark.parametrize("axis", [None, 0])
def test_half_precision_projections_stay_inside_the_ball(dtype, q, axis):
    """Rounded to nearest, a bf16 unit of norm 0.25 came out at 0.25039: every entry is now rounded towards 0,
    and each is within one unit in the last place of the float32 projection."""
    x = jnp.asarray(np.random.default_rng(3).normal(size=(64, 16)), dtype)
    got = projection_lq_ball(x, 0.37, q=q, axis=axis)
    values = np.asarray(got, np.float64)
    norms = np.max(np.abs(values), axis=axis) if q == math.inf else np.sum(np.abs(values) ** q, axis=axis) ** (1 / q)
    assert got.dtype == dtype and np.all(norms <= 0.37)
    exact = np.asarray(projection_lq_ball(x.astype(jnp.float32), 0.37, q=q, axis=axis), np.float64)
    away = jnp.where(got < 0, -jnp.inf, jnp.inf).astype(dtype)  # the ulp on the side of larger magnitude
    ulp = np.abs(np.asarray(jnp.nextafter(got, away), np.float64) - values)
    assert np.all(np.abs(values - exact) <= ulp + 1e-12)
    small = projection_lq_ball(jnp.array([[0.3, 0.05], [0.4, 0.01]], dtype), 0.25, q=2.0, axis=0)
    assert np.all(np.linalg.norm(np.asarray(small, np.float64), axis=0) <= 0.25)


def test_half_precision_radius_derivative_is_defined_for_every_q():
    """The q = ∞ half-precision guard used nextafter on the radius, which has no derivative rule: jax.grad raised."""
    x = jnp.array([[0.3, -0.9], [0.4, 0.01]], jnp.bfloat16)
    for q in (2.0, math.inf):
        grad = jax.grad(lambda r: projection_lq_ball(x, r, q=q).astype(jnp.float32).sum())(0.25)
        fd = (projection_lq_ball(x.astype(jnp.float32), 0.26, q=q).sum()
              - projection_lq_ball(x.astype(jnp.float32), 0.24, q=q).sum()) / 0.02
        assert np.isfinite(float(grad)) and float(grad) == pytest.approx(float(fd), rel=2e-2)
