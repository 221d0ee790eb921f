"""share_within_groups / group_share_penalty: explicit groups (Nowlan & Hinton 1992, hard assignments)."""

from __future__ import annotations

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optreg


def test_four_weights_in_two_groups():
    """Nowlan & Hinton (1992), hard groups: w1, w2 share μ1; w3, w4 share μ2.

    R = (w1−μ1)² + (w2−μ1)² + (w3−μ2)² + (w4−μ2)².
    """
    w = jnp.array([1.0, 3.0, -2.0, 4.0])
    groups = np.array([0, 0, 1, 1])
    lam = 0.1
    # μ not given: the group means μ1 = 2, μ2 = 1, so R = 1 + 1 + 9 + 9 = 20
    np.testing.assert_allclose(optreg.group_share_penalty({"w": w}, lam, {"w": groups}), lam * 20.0, rtol=1e-6)
    tx = optreg.share_within_groups(lam, {"w": groups})
    updates, _ = tx.update({"w": jnp.zeros(4)}, tx.init({"w": w}), {"w": w})
    np.testing.assert_allclose(updates["w"], 2 * lam * np.array([-1.0, 1.0, -3.0, 3.0]), rtol=1e-6)
    # fixed shared values μ = (0.5, 1.5): R = 0.25 + 6.25 + 12.25 + 6.25 = 25
    shared = jnp.array([0.5, 1.5])
    np.testing.assert_allclose(optreg.group_share_penalty({"w": w}, lam, {"w": groups}, shared_values=shared),
                               lam * 25.0,
                               rtol=1e-6)
    tx = optreg.share_within_groups(lam, {"w": groups}, shared_values=shared)
    updates, _ = tx.update({"w": jnp.zeros(4)}, tx.init({"w": w}), {"w": w})
    np.testing.assert_allclose(updates["w"], 2 * lam * np.array([0.5, 2.5, -3.5, 2.5]), rtol=1e-6)


def tree_and_groups():
    rng = np.random.default_rng(0)
    params = {"a": jnp.asarray(rng.standard_normal((4, 5)), jnp.float32),
              "b": jnp.asarray(rng.standard_normal(6), jnp.float32),
              "c": jnp.asarray(rng.standard_normal(3), jnp.float32)}
    groups = {"a": rng.integers(-1, 3, (4, 5)), "b": np.array([0, 1, 2, 2, -1, 0]), "c": None}
    return params, groups


@pytest.mark.parametrize("shared", [None, jnp.array([0.3, -1.0, 2.0])])
def test_transform_equals_grad_of_penalty_with_groups_across_leaves(shared):
    params, groups = tree_and_groups()
    tx = optreg.share_within_groups(0.7, groups, shared_values=shared)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    penalty_grad = jax.grad(lambda p: optreg.group_share_penalty(p, 0.7, groups, shared_values=shared))(params)
    chex.assert_trees_all_close(jax.tree.map(lambda u, g: u - g, updates, grads), penalty_grad, atol=1e-5)
    np.testing.assert_array_equal(updates["c"], grads["c"])  # ungrouped leaf untouched
    np.testing.assert_array_equal(np.asarray(updates["b"])[4], 1.0)  # label −1 untouched


def test_sgd_shrinks_each_deviation_geometrically_and_keeps_group_means():
    params, groups = tree_and_groups()
    lam, lr, steps = 0.5, 0.1, 7
    tx = optax.chain(optreg.share_within_groups(lam, groups), optax.sgd(lr))
    state = tx.init(params)
    flat_before = np.concatenate([np.asarray(params["a"]).ravel(), np.asarray(params["b"])])
    labels = np.concatenate([groups["a"].ravel(), groups["b"]])
    means = {g: flat_before[labels == g].mean() for g in range(3)}
    p = params
    for _ in range(steps):
        updates, state = tx.update(jax.tree.map(jnp.zeros_like, p), state, p)
        p = optax.apply_updates(p, updates)
    flat_after = np.concatenate([np.asarray(p["a"]).ravel(), np.asarray(p["b"])])
    for g in range(3):
        expected = means[g] + (flat_before[labels == g] - means[g]) * (1 - 2 * lr * lam) ** steps
        np.testing.assert_allclose(flat_after[labels == g], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(flat_after[labels == -1], flat_before[labels == -1])


def test_schedule_and_dtype():
    params = {"w": jnp.array([1.0, 3.0, -2.0, 4.0], jnp.bfloat16)}
    tx = optreg.share_within_groups(optax.linear_schedule(0.0, 1.0, 2), {"w": np.array([0, 0, 1, 1])})
    state = tx.init(params)
    updates, state = tx.update(params, state, params)
    chex.assert_trees_all_equal(updates, params)  # schedule(0) = 0
    updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
    assert updates["w"].dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(updates["w"], np.float32), [-1.0, 1.0, -3.0, 3.0])  # 2·λ(w − μ), λ = 0.5


@pytest.mark.parametrize(
    "groups, shared, error",
    [
        ({"w": np.array([0.0, 1.0, 0.0, 1.0])}, None, TypeError),
        ({"w": np.array([0, -2, 1, 1])}, None, ValueError),
        ({"w": np.array([0, 0, 1, 1])}, jnp.zeros(3), ValueError),
    ],
)
def test_bad_arguments_raise_at_construction(groups, shared, error):
    with pytest.raises(error):
        optreg.share_within_groups(0.1, groups, shared_values=shared)


def test_groups_that_do_not_fit_the_params_raise_at_init():
    tx = optreg.share_within_groups(0.1, {"w": np.array([0, 0, 1])})
    with pytest.raises(ValueError, match="shape"):
        tx.init({"w": jnp.zeros(4)})
    with pytest.raises(ValueError, match="structure"):
        tx.init({"v": jnp.zeros(3)})


def test_labels_live_in_the_state_shaped_like_the_params():
    """The labels are state (sharded like the params), not constants baked into the compiled step."""
    params = {"a": jnp.zeros((3, 2)), "b": jnp.zeros(4), "c": jnp.zeros(2)}
    groups = {"a": np.array([[0, 1], [1, 0], [-1, 2]]), "b": np.full(4, 2), "c": None}
    state = optreg.share_within_groups(0.1, groups).init(params)
    assert isinstance(state, optreg.GroupState)
    chex.assert_trees_all_equal_shapes(state.labels, params)
    assert all(leaf.dtype == jnp.int8 for leaf in jax.tree.leaves(state.labels))  # G = 3 fits int8
    np.testing.assert_array_equal(state.labels["a"], groups["a"])
    np.testing.assert_array_equal(state.labels["c"], [-1, -1])  # ungrouped: −1
    many = optreg.share_within_groups(0.1, {"w": np.arange(300)}).init({"w": jnp.zeros(300)})
    assert many.labels["w"].dtype == jnp.int16
    tx = optreg.share_within_groups(0.1, {"w": np.arange(4096) % 7})
    w = {"w": jnp.ones(4096)}
    hlo = jax.jit(tx.update).lower(w, tx.init(w), w).compile().as_text()
    assert not re.search(r"\[4096(,1)?\]\S* constant\(", hlo), "labels were baked into the program"
