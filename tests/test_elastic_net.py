"""add_elastic_net against jax.grad of its penalty and against the two Lq parts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tree_allclose

import optreg


def apply(tx, grads, params):
    updates, _ = tx.update(grads, tx.init(params), params)
    return updates


def test_equals_grad_of_penalty(tree, grads):
    extra = jax.grad(lambda p: optreg.elastic_net_penalty(p, 0.2, 0.7))(tree)
    tree_allclose(apply(optreg.add_elastic_net(0.2, 0.7), grads, tree), jax.tree.map(jnp.add, grads, extra), rtol=1e-6)


def test_penalty_matches_sklearn_convention():
    """sklearn ElasticNet: α·ρ‖w‖₁ + ½α(1−ρ)‖w‖² with l1 = αρ, l2 = α(1−ρ)."""
    w = {"w": jnp.array([1.0, -2.0, 0.5])}
    alpha, rho = 0.3, 0.25
    expected = alpha * rho * 3.5 + 0.5 * alpha * (1 - rho) * (1 + 4 + 0.25)
    np.testing.assert_allclose(optreg.elastic_net_penalty(w, alpha * rho, alpha * (1 - rho)), expected, rtol=1e-6)


def test_is_the_sum_of_l1_and_l2(tree, grads):
    chained = optax.chain(optreg.add_decayed_weights_q(0.2, 1.0), optreg.add_decayed_weights_q(0.7, 2.0))
    tree_allclose(apply(optreg.add_elastic_net(0.2, 0.7), grads, tree), apply(chained, grads, tree), rtol=1e-6)


def test_schedules_and_jit(tree, grads):
    tx = optreg.add_elastic_net(optax.constant_schedule(0.2), optax.linear_schedule(0.0, 1.0, 10))
    state = tx.init(tree)
    _, state = jax.jit(tx.update)(grads, state, tree)
    out, state = jax.jit(tx.update)(grads, state, tree)
    tree_allclose(out, apply(optreg.add_elastic_net(0.2, 0.1), grads, tree), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kwargs", [{"l1": -1.0}, {"l2": float("nan")}, {"l1": jnp.ones(2)}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="l1|l2"):
        optreg.add_elastic_net(**kwargs)
