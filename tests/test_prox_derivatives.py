"""Derivatives of the prox operators, the projections and the transforms built on them.

Every check compares ``jax.jacfwd`` / ``jax.jacrev`` / ``jax.grad`` / ``jax.jvp``
with central finite differences in float64, at points away from the kinks
(thresholds computed here from the papers' formulas, not by the code under
test), and for q = 1, 2, ∞ the projections' gradients with optax's own.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import optreg
from optreg.projections import projection_lq_ball
from optreg.prox import prox_elastic_net, prox_group_lasso, prox_lq, tree_prox_lq

DERIVATIVE_Q = [0.0, 0.3, 0.5, 2.0 / 3.0, 0.9, 1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 6.0]


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def threshold(s: np.ndarray, q: float) -> np.ndarray:
    """|x| at which prox_lq jumps from 0 (Xu et al. 2012; Parikh & Boyd 2014); 0 where it has no threshold."""
    if q == 0:
        return np.sqrt(2 * s)
    if q < 1:
        beta = (2 * s * (1 - q) / q) ** (1 / (2 - q))
        return beta + s * beta ** (q - 1)
    if q == 1:
        return s
    return np.zeros_like(s)


def central(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central differences of an elementwise f at every entry of x (each entry its own direction)."""
    f = jax.jit(f)
    return (np.asarray(f(x + h)) - np.asarray(f(x - h))) / (2 * h)


def jacobian_fd(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Full Jacobian of f (array -> array) by central differences, shape f(x).shape + x.shape."""
    f = jax.jit(f)
    out = np.zeros(np.shape(f(x)) + x.shape)
    for index in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[index] = h
        out[(...,) + index] = (np.asarray(f(x + step)) - np.asarray(f(x - step))) / (2 * h)
    return out


def sample(q: float, size: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """x and s with |x| at least 1e-3 (relative) from the threshold, so ±h never crosses it."""
    rng = np.random.default_rng(seed)
    x = rng.normal(scale=2.0, size=4 * size)
    s = np.exp(rng.uniform(-3.0, 1.0, size=4 * size))
    tau = threshold(s, q)
    keep = (np.abs(np.abs(x) - tau) > 1e-3 * np.maximum(tau, 1.0)) & (np.abs(x) > 1e-3)
    return x[keep][:size], s[keep][:size]


@pytest.mark.parametrize("q", DERIVATIVE_Q)
def test_prox_lq_derivatives_in_x_and_scale_match_central_differences(q):
    x, s = sample(q)

    def f(x, s):
        return prox_lq(x, s, q)

    grad_x, grad_s = jax.vmap(jax.grad(f, argnums=(0, 1)))(jnp.asarray(x), jnp.asarray(s))  # reverse mode
    _, jvp_x = jax.jvp(lambda v: f(v, s), (jnp.asarray(x),), (jnp.ones_like(x),))  # forward mode
    _, jvp_s = jax.jvp(lambda v: f(x, v), (jnp.asarray(s),), (jnp.ones_like(s),))
    fd_x = central(lambda v: f(v, s), x)
    fd_s = central(lambda v: f(x, v), s)
    for got, want in ((grad_x, fd_x), (jvp_x, fd_x), (grad_s, fd_s), (jvp_s, fd_s)):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-7)
    zero = np.asarray(f(x, s)) == 0
    if q <= 1:  # both sides of the threshold are covered, and the zeroed side has derivative 0
        assert 0.05 < zero.mean() < 0.95
        assert np.all(np.asarray(grad_x)[zero] == 0) and np.all(np.asarray(grad_s)[zero] == 0)
    assert np.all(np.abs(np.asarray(grad_x)[~zero]) > 0)


@pytest.mark.parametrize("q", [0.5, 1.0, 1.5, 2.5])
def test_prox_lq_full_jacobians_forward_and_reverse(q):
    x, s = sample(q, size=9, seed=1)
    x, s = x.reshape(3, 3), s.reshape(3, 3)
    for argnum, point in ((0, x), (1, s)):
        def f(v, argnum=argnum):
            return prox_lq(v, s, q) if argnum == 0 else prox_lq(x, v, q)

        want = jacobian_fd(f, point)
        np.testing.assert_allclose(jax.jacfwd(f)(jnp.asarray(point)), want, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(jax.jacrev(f)(jnp.asarray(point)), want, rtol=1e-6, atol=1e-8)


def test_prox_lq_gradient_examples_from_the_issue():
    assert float(jax.grad(lambda x: prox_lq(x, 0.1, 2.0))(1.0)) == pytest.approx(1 / 1.1, rel=1e-12)
    # soft threshold: slope 1 on the kept side, 0 inside; d/ds = −sign(x)
    _, tangent = jax.jvp(lambda x: prox_lq(x, 0.5, 1.0), (jnp.array([2.0, -3.0, 0.2]),), (jnp.ones(3),))
    np.testing.assert_array_equal(tangent, [1.0, 1.0, 0.0])
    np.testing.assert_array_equal(jax.grad(lambda s: jnp.sum(prox_lq(jnp.array([2.0, -3.0]), s, 1.0)))(0.5), 0.0)
    np.testing.assert_array_equal(jax.jacfwd(lambda s: prox_lq(jnp.array([2.0, -3.0]), s, 1.0))(0.5), [-1.0, 1.0])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("q", [0.5, 1.0, 1.5, 2.0, 2.5])
def test_prox_lq_derivatives_in_lower_precision_follow_float64(dtype, q):
    x, s = sample(q, size=64, seed=2)
    x64 = np.asarray(jnp.asarray(x, dtype), np.float64)  # the same points, rounded
    s64 = np.asarray(jnp.asarray(s, dtype), np.float64)
    reference = np.asarray(jax.vmap(jax.grad(lambda x, s: prox_lq(x, s, q)))(x64, s64))
    got = jax.vmap(jax.grad(lambda x, s: prox_lq(x, s, q)))(jnp.asarray(x, dtype), jnp.asarray(s, dtype))
    assert got.dtype == dtype
    tolerance = 2e-4 if dtype == jnp.float32 else 3e-2
    # the zero pattern may differ where rounding moved a point across the threshold: compare the rest
    same = (np.asarray(prox_lq(x64, s64, q)) == 0) == (np.asarray(prox_lq(jnp.asarray(x, dtype), s64, q)) == 0)
    np.testing.assert_allclose(np.asarray(got, np.float64)[same], reference[same], rtol=tolerance, atol=tolerance)
    assert np.any(np.asarray(got) != 0)


def test_tree_prox_lq_and_elastic_net_derivatives_in_pytrees_of_strengths():
    rng = np.random.default_rng(3)
    tree = {"w": jnp.asarray(rng.normal(size=(3, 4))), "b": jnp.asarray(rng.normal(size=4))}
    scales = {"w": jnp.asarray(np.exp(rng.uniform(-2, 0, size=(1, 4)))), "b": jnp.asarray(0.3)}

    def loss(tree, scales):
        out = tree_prox_lq(tree, scales, 1.5)
        return jnp.sum(jnp.sin(out["w"])) + jnp.sum(out["b"] ** 3)

    grads = jax.grad(loss, argnums=(0, 1))(tree, scales)
    flat, unravel = ravel_pytree((tree, scales))
    loss = jax.jit(loss)
    want = np.array([
        (loss(*unravel(flat + h)) - loss(*unravel(flat - h))) / 2e-6 for h in np.eye(flat.size) * 1e-6
    ])
    np.testing.assert_allclose(ravel_pytree(grads)[0], want, rtol=1e-6, atol=1e-8)

    x = jnp.asarray(rng.normal(size=7) * 2)
    for argnum in range(3):
        def f(v, argnum=argnum):
            args = [x, 0.4, 0.7]
            args[argnum] = v
            return prox_elastic_net(*args)

        point = np.asarray([x, 0.4, 0.7][argnum], np.float64)
        want = jacobian_fd(f, point) if argnum == 0 else central(f, point)
        np.testing.assert_allclose(jax.jacfwd(f)(jnp.asarray(point)), want, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(jax.jacrev(f)(jnp.asarray(point)), want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("axis", [None, 0, 1, (0, 2)])
def test_prox_group_lasso_jacobians_in_x_and_scale(axis):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 4, 2))
    x[:, 1] *= 0.05  # small groups that are zeroed for axis=0 and (0, 2)
    scale = 0.3 if axis is not None else 2.0

    def f(v):
        return prox_group_lasso(v, scale, axis=axis)

    def g(s):
        return prox_group_lasso(jnp.asarray(x), s, axis=axis)

    want = jacobian_fd(f, x)
    np.testing.assert_allclose(jax.jacfwd(f)(jnp.asarray(x)), want, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(jax.jacrev(f)(jnp.asarray(x)), want, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(jax.jacfwd(g)(scale), central(g, np.float64(scale)), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(jax.jacrev(g)(scale), central(g, np.float64(scale)), rtol=1e-6, atol=1e-8)


def test_group_lasso_has_zero_not_nan_derivatives_at_zero_groups():
    zeros = jnp.zeros((3, 2))
    assert np.all(np.asarray(jax.grad(lambda x: jnp.sum(prox_group_lasso(x, 0.5, axis=0)))(zeros)) == 0)
    assert np.all(np.asarray(jax.grad(lambda x: optreg.group_lasso_penalty(x, 0.5, axis=0))(zeros)) == 0)


def l1_threshold(x: np.ndarray, radius: float) -> float:
    """θ of the L1-ball projection (Duchi et al. 2008, sort-based) in float64."""
    magnitude = np.sort(np.abs(x).ravel())[::-1]
    excess = np.cumsum(magnitude) - radius
    rho = np.nonzero(magnitude - excess / np.arange(1, magnitude.size + 1) > 0)[0].max()
    return excess[rho] / (rho + 1)


BALL_CASES = [(q, None) for q in (1.0, 1.2, 1.5, 2.0, 3.0, 4.0, math.inf)] + [
    (q, axis) for axis in (0, (1,)) for q in (1.0, 2.0, 3.0, math.inf)
]


@pytest.mark.parametrize("q, axis", BALL_CASES)
def test_projection_jacobians_in_x_and_radius(q, axis):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4, 5))
    radius = 1.3 if axis is None else 0.7
    if q == 1.0 and axis is None:  # keep clear of the soft threshold's kinks
        assert np.min(np.abs(np.abs(x) - l1_threshold(x, radius))) > 1e-3

    def f(v):
        return projection_lq_ball(v, radius, q, axis=axis)

    def g(r):
        return projection_lq_ball(jnp.asarray(x), r, q, axis=axis)

    want = jacobian_fd(f, x)
    np.testing.assert_allclose(jax.jacfwd(f)(jnp.asarray(x)), want, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(jax.jacrev(f)(jnp.asarray(x)), want, rtol=1e-6, atol=1e-8)
    want_r = central(g, np.float64(radius))
    np.testing.assert_allclose(jax.jacfwd(g)(radius), want_r, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(jax.jacrev(g)(radius), want_r, rtol=1e-6, atol=1e-8)
    assert np.abs(want).max() > 0 and np.abs(want_r).max() > 0


OPTAX_BALLS = {
    1.0: optax.projections.projection_l1_ball,
    2.0: optax.projections.projection_l2_ball,
    math.inf: optax.projections.projection_linf_ball,
}


@pytest.mark.parametrize("q", list(OPTAX_BALLS))
def test_projection_gradients_equal_optax_projections_gradients(q):
    rng = np.random.default_rng(6)
    tree = {"a": jnp.asarray(rng.normal(size=(4, 5))), "b": jnp.asarray(rng.normal(size=3))}

    def loss(project):
        def value(tree, radius):
            out = project(tree, radius)
            return jnp.sum(jnp.sin(out["a"]) * jnp.arange(5.0)) + jnp.sum(out["b"] ** 3)

        return value

    ours = jax.grad(loss(lambda t, r: projection_lq_ball(t, r, q)), argnums=(0, 1))(tree, 1.1)
    theirs = jax.grad(loss(OPTAX_BALLS[q]), argnums=(0, 1))(tree, 1.1)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_projection_inside_the_ball_is_the_identity_and_vmap_of_grad_works():
    x = jnp.asarray(np.random.default_rng(7).normal(size=(6, 3)))
    for q in (1.0, 1.5, 2.0):
        jacobian = jax.jit(jax.jacrev(lambda v, q=q: projection_lq_ball(v, 100.0, q)))(x[0])
        np.testing.assert_array_equal(jacobian, np.eye(3))
        grad = jax.grad(lambda v, q=q: jnp.sum(projection_lq_ball(v, 0.5, q) ** 2))
        batched = jax.jit(jax.vmap(grad))(x)
        for row in range(6):
            one = jax.jit(grad)(x[row])
            np.testing.assert_allclose(batched[row], one, rtol=1e-12, atol=1e-14)


def unrolled(make_tx, steps: int = 5):
    """loss(hyper) of the params after ``steps`` updates of make_tx(hyper) on a fixed quadratic, float64."""
    rng = np.random.default_rng(8)
    w0 = {"w": jnp.asarray(rng.normal(size=(4, 3))), "b": jnp.asarray(rng.normal(size=3))}
    target = jax.tree.map(lambda w: 0.3 * w + 0.1, w0)

    def run(hyper):
        tx = make_tx(hyper)
        params, state = w0, tx.init(w0)
        for _ in range(steps):
            grads = jax.tree.map(lambda p, t: p - t, params, target)
            updates, state = tx.update(grads, state, params)
            params = optax.apply_updates(params, updates)
        return jnp.sum(params["w"] ** 2) + jnp.sum(jnp.sin(params["b"]))

    return run


@pytest.mark.parametrize("name, make_tx, hyper", [
    ("proximal_lq q=1", lambda lam: optax.chain(optax.sgd(0.2), optreg.proximal_lq(0.2, lam, 1.0)), 0.37),
    ("proximal_lq q=0.5", lambda lam: optax.chain(optax.sgd(0.2), optreg.proximal_lq(0.2, lam, 0.5)), 0.11),
    ("proximal_lq q=1.5", lambda lam: optax.chain(optax.adam(0.1), optreg.proximal_lq(0.1, lam, 1.5)), 0.6),
    ("proximal_lq rate", lambda rate: optax.chain(optax.sgd(rate), optreg.proximal_lq(rate, 0.4, 1.0)), 0.15),
    ("proximal_elastic_net", lambda lam: optax.chain(optax.sgd(0.2), optreg.proximal_elastic_net(0.2, lam, 0.5)),
     0.33),
    ("proximal_group_lasso", lambda lam: optax.chain(optax.sgd(0.2),
                                                     optreg.proximal_group_lasso(0.2, lam, axis=0)), 0.9),
    ("project_lq_ball q=2", lambda r: optax.chain(optax.sgd(0.2), optreg.project_lq_ball(r, 2.0)), 1.5),
    ("project_lq_ball q=1 per unit", lambda r: optax.chain(optax.sgd(0.2), optreg.project_lq_ball(r, 1.0, axis=0)),
     0.8),
    ("project_lq_ball q=3", lambda r: optax.chain(optax.sgd(0.2), optreg.project_lq_ball(r, 3.0)), 1.1),
])
def test_gradient_through_unrolled_steps_with_respect_to_the_strength(name, make_tx, hyper):
    run = jax.jit(unrolled(make_tx))
    got = jax.grad(run)(hyper)
    forward = jax.jacfwd(run)(hyper)
    want = (run(hyper + 1e-6) - run(hyper - 1e-6)) / 2e-6
    assert abs(float(want)) > 1e-3, name  # the strength matters here
    np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(forward, want, rtol=1e-5, err_msg=name)
