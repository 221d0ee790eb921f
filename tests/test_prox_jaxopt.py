"""jaxopt's prox operators by name and signature: brute-force minimisers, jaxopt's call forms, derivatives, errors.

References are the objectives minimised on a dense grid (nothing from the code under test) and central
finite differences in float64.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optreg.prox import (
    make_prox_from_projection,
    prox_elastic_net,
    prox_group_lasso,
    prox_lasso,
    prox_non_negative_lasso,
    prox_non_negative_ridge,
    prox_none,
    prox_ridge,
)

GRID = np.linspace(-4.0, 4.0, 160_001)  # spacing 5e-5
POINTS = np.array([-3.1, -1.2, -0.4, -0.05, 0.0, 0.07, 0.3, 0.9, 2.6])

#: operator -> the penalty it is the prox of, as a function of (y, strength), and its feasible set.
OBJECTIVES = {
    prox_lasso: (lambda y, s: s * np.abs(y), None),
    prox_non_negative_lasso: (lambda y, s: s * y, "non-negative"),
    prox_ridge: (lambda y, s: 0.5 * s * y**2, None),
    prox_non_negative_ridge: (lambda y, s: 0.5 * s * y**2, "non-negative"),
}


def brute_force(penalty, x: float, strength: float, feasible) -> float:
    grid = GRID[GRID >= 0] if feasible == "non-negative" else GRID
    return float(grid[np.argmin(0.5 * (grid - x) ** 2 + penalty(grid, strength))])


@pytest.mark.parametrize("operator", list(OBJECTIVES), ids=lambda f: f.__name__)
@pytest.mark.parametrize("strength, scaling", [(0.5, 1.0), (0.25, 2.0), (2.0, 0.3)])
def test_each_operator_is_the_grid_minimiser_of_its_objective_with_strength_times_scaling(operator, strength, scaling):
    penalty, feasible = OBJECTIVES[operator]
    got = np.asarray(operator(jnp.asarray(POINTS, jnp.float32), strength, scaling))
    expected = [brute_force(penalty, x, strength * scaling, feasible) for x in POINTS]
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_jaxopt_call_forms_pytrees_defaults_and_none():
    x = (jnp.array([-1.5, 0.2, 0.8]), jnp.array([2.0, -0.1, 0.6]))
    # a tuple of per-leaf scalars, a pytree of per-entry arrays, and the default strength 1
    out = prox_lasso(x, (0.5, 0.2))
    np.testing.assert_allclose(out[0], [-1.0, 0.0, 0.3], atol=1e-7)
    np.testing.assert_allclose(out[1], [1.8, 0.0, 0.4], atol=1e-7)
    out = prox_lasso(x, (jnp.array([1.0, 0.1, 0.9]), jnp.array([0.0, 0.2, 0.7])))
    np.testing.assert_allclose(out[0], [-0.5, 0.1, 0.0], atol=1e-7)
    np.testing.assert_allclose(out[1], [2.0, 0.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(prox_lasso(x[0]), [-0.5, 0.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(prox_ridge(x[0]), np.asarray(x[0]) / 2, rtol=1e-6)
    assert prox_none(x, (1.0, 2.0), 3.0) is x
    mixed = {"w": jnp.array([1.5, -0.2]), "step": jnp.asarray(3)}
    out = prox_non_negative_lasso(mixed, 0.5)
    np.testing.assert_allclose(out["w"], [1.0, 0.0])
    assert out["step"] is mixed["step"]  # non-floating leaves pass through
    half = prox_non_negative_ridge(jnp.array([-1.0, 3.0], jnp.bfloat16), 2.0)
    assert half.dtype == jnp.bfloat16 and half.tolist() == [0.0, 1.0]


def test_elastic_net_takes_jaxopt_pairs_as_the_same_scales():
    """jaxopt: scaling·lam·(|y| + (gam/2)·y²), i.e. l1 = scaling·lam, l2 = scaling·lam·gam."""
    x = jnp.array([-2.0, -0.3, 0.1, 0.7, 3.0])
    for lam, gam, scaling in [(0.5, 0.1, 1.0), (0.2, 3.0, 2.0), (1.0, 1.0, 1.0)]:
        expected = [brute_force(lambda y, s: s * (np.abs(y) + 0.5 * gam * y**2), float(v), lam * scaling, None)
                    for v in np.asarray(x)]
        np.testing.assert_allclose(prox_elastic_net(x, (lam, gam), scaling=scaling), expected, atol=1e-4)
        np.testing.assert_allclose(prox_elastic_net(x, hyperparams=(lam, gam), scaling=scaling),
                                   prox_elastic_net(x, scaling * lam, scaling * lam * gam), rtol=1e-6)
    np.testing.assert_allclose(prox_elastic_net(x), prox_elastic_net(x, (1.0, 1.0)))
    pair = (jnp.full(5, 0.5), jnp.full(5, 0.1))  # per-entry arrays, as jaxopt allows
    np.testing.assert_allclose(prox_elastic_net(x, pair), prox_elastic_net(x, (0.5, 0.1)), rtol=1e-6)
    tree = (x, 2 * x)
    out = prox_elastic_net(tree, ((0.5, 0.2), (0.1, 0.0)))
    np.testing.assert_allclose(out[1], prox_lasso(2 * x, 0.2), rtol=1e-6)
    np.testing.assert_allclose(prox_elastic_net(x, 0.5, 0.1, scaling=2.0), prox_elastic_net(x, 1.0, 0.2), rtol=1e-6)


def test_jaxopt_solvers_positional_call_prox_x_hyperparams_scaling():
    """jaxopt's ProximalGradient calls prox(x, hyperparams_prox, stepsize) positionally, for every operator."""
    x = (jnp.array([1.0, -2.0]), jnp.array([3.0]))
    out = prox_elastic_net(x, (0.5, 2.0), 0.1)  # l1 = 0.05, l2 = 0.1: soft(x, 0.05) / 1.1
    np.testing.assert_allclose(out[0], [0.95 / 1.1, -1.95 / 1.1], rtol=1e-6)
    np.testing.assert_allclose(out[1], [2.95 / 1.1], rtol=1e-6)
    np.testing.assert_allclose(prox_elastic_net(x[0], [0.5, 2.0], 0.1), out[0], rtol=1e-6)  # a list is a pair too
    for operator, reference in [(prox_lasso, lambda v: np.sign(v) * np.maximum(np.abs(v) - 0.05, 0)),
                                (prox_ridge, lambda v: v / 1.05), (prox_group_lasso, lambda v: v * (1 - 0.05 / 5))]:
        np.testing.assert_allclose(operator(jnp.array([3.0, -4.0]), 0.5, 0.1), reference(np.array([3.0, -4.0])),
                                   rtol=1e-6)
    with pytest.raises(TypeError, match="scaling given twice"):
        prox_elastic_net(x, (0.5, 2.0), 0.1, scaling=0.2)


def test_group_lasso_takes_jaxopt_scaling():
    x = jnp.array([3.0, 4.0])  # norm 5
    np.testing.assert_allclose(prox_group_lasso(x, 1.0, 2.0), [1.8, 2.4], rtol=1e-6)  # 1 - 2/5
    np.testing.assert_array_equal(prox_group_lasso(x, 10.0, 0.5), [0.0, 0.0])
    np.testing.assert_allclose(prox_group_lasso(x), [2.4, 3.2], rtol=1e-6)  # jaxopt's default strength 1
    kernel = jnp.array([[3.0, 0.1], [4.0, 0.2]])
    np.testing.assert_allclose(prox_group_lasso(kernel, 0.5, 2.0, axis=0), prox_group_lasso(kernel, 1.0, axis=0))


def test_make_prox_from_projection_calls_the_projection_with_or_without_hyperparams():
    x = jnp.array([0.3, 2.0, -1.0])
    simplex = make_prox_from_projection(optax.projections.projection_simplex)
    np.testing.assert_allclose(simplex(x), optax.projections.projection_simplex(x))
    np.testing.assert_allclose(simplex(x, 3.0, scaling=0.1), optax.projections.projection_simplex(x, 3.0))
    with pytest.raises(TypeError, match="projection must be a function"):
        make_prox_from_projection({"not": "callable"})


@pytest.mark.parametrize("call, error, message", [
    (lambda: prox_lasso(jnp.ones(3), -0.1), ValueError, "l1reg"),
    (lambda: prox_ridge(jnp.ones(3), 0.1, -1.0), ValueError, "scaling"),
    (lambda: prox_lasso(jnp.ones(3), 0.1, jnp.ones(3)), ValueError, "scaling must be one number"),
    (lambda: prox_lasso(jnp.arange(3), 0.1), TypeError, "real floating"),
    (lambda: prox_non_negative_lasso({"a": jnp.ones(2)}, {"b": 0.1}), ValueError, "l1reg"),
    (lambda: prox_elastic_net(jnp.ones(3), 0.5), TypeError, r"\(lam, gam\) pair"),
    (lambda: prox_elastic_net(jnp.ones(3), hyperparams=0.5), TypeError, r"jaxopt's pair"),
    (lambda: prox_elastic_net(jnp.ones(3), 0.5, 0.1, hyperparams=(0.5, 0.1)), TypeError, "not both|either"),
    (lambda: prox_elastic_net(jnp.ones(3), (0.5, -0.1)), ValueError, r"hyperparams\[1\]"),
    (lambda: prox_group_lasso(jnp.ones(3), 0.1, -2.0), ValueError, "scaling"),
])
def test_bad_arguments_are_refused_naming_them(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.fixture()
def float64():
    with jax.enable_x64(True):
        yield


def central(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    f = jax.jit(f)
    return (np.asarray(f(x + h)) - np.asarray(f(x - h))) / (2 * h)


@pytest.mark.parametrize("operator, kinks", [
    (prox_lasso, lambda s: [-s, s]), (prox_non_negative_lasso, lambda s: [s]),
    (prox_ridge, lambda s: []), (prox_non_negative_ridge, lambda s: [0.0]),
], ids=lambda v: getattr(v, "__name__", ""))
def test_derivatives_in_x_and_the_strength_match_finite_differences(float64, operator, kinks):
    x = np.array([-2.3, -0.9, -0.2, 0.15, 0.75, 1.7])
    s, scaling = 0.4, 1.5
    assert all(np.min(np.abs(x - k)) > 1e-3 for k in kinks(s * scaling))
    jvp_x = jax.jvp(lambda v: operator(v, s, scaling), (jnp.asarray(x),), (jnp.ones(6),))[1]
    np.testing.assert_allclose(jvp_x, central(lambda v: operator(v, s, scaling), x), atol=1e-7)
    d_strength = jax.jacrev(lambda t: operator(jnp.asarray(x), t, scaling))(s)
    fd = (np.asarray(operator(x, s + 1e-6, scaling)) - np.asarray(operator(x, s - 1e-6, scaling))) / 2e-6
    np.testing.assert_allclose(d_strength, fd, atol=1e-7)
    assert np.any(np.asarray(d_strength) != 0)
    d_scaling = jax.grad(lambda c: jnp.sum(operator(jnp.asarray(x), s, c)))(scaling)
    fd = (np.sum(operator(x, s, scaling + 1e-6)) - np.sum(operator(x, s, scaling - 1e-6))) / 2e-6
    np.testing.assert_allclose(d_scaling, fd, atol=1e-7)


def test_elastic_net_pair_derivatives_match_finite_differences(float64):
    x = np.array([-2.3, -0.2, 0.6, 1.7])
    f = lambda lam, gam: jnp.sum(prox_elastic_net(jnp.asarray(x), (lam, gam), scaling=1.3) ** 2)  # noqa: E731
    grads = jax.grad(f, argnums=(0, 1))(0.3, 0.8)
    h = 1e-6
    np.testing.assert_allclose(grads[0], (f(0.3 + h, 0.8) - f(0.3 - h, 0.8)) / (2 * h), rtol=1e-6)
    np.testing.assert_allclose(grads[1], (f(0.3, 0.8 + h) - f(0.3, 0.8 - h)) / (2 * h), rtol=1e-6)


def test_jit_and_vmap_over_the_strength():
    x = jnp.array([-1.0, 0.25, 2.0])
    strengths = jnp.array([0.1, 0.5, 1.5])
    batched = jax.vmap(lambda s: prox_lasso(x, s))(strengths)
    for row, s in zip(np.asarray(batched), np.asarray(strengths)):
        np.testing.assert_allclose(row, np.sign(x) * np.maximum(np.abs(x) - s, 0), rtol=1e-6)
    traced = jax.jit(prox_non_negative_ridge)(x, jnp.float32(1.0), jnp.float32(2.0))
    np.testing.assert_allclose(traced, [0.0, 0.25 / 3, 2.0 / 3], rtol=1e-6)
    assert jax.jit(prox_lasso)(x, jnp.float32(-1.0)).tolist() == x.tolist()  # a traced negative acts as 0
