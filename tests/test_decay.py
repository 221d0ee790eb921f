"""add_decayed_weights_q and lq_penalty: against jax.grad, optax and the closed-form SGD step."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import random_tree, tree_allclose

import optreg

EXPONENTS = [0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0]


def apply(tx, grads, params):
    state = tx.init(params)
    updates, _ = tx.update(grads, state, params)
    return updates


@pytest.mark.parametrize("q", EXPONENTS)
def test_equals_grad_of_penalty(q, tree, grads):
    lam = 0.37
    expected_extra = jax.grad(lambda p: optreg.lq_penalty(p, lam, q))(tree)
    got = apply(optreg.add_decayed_weights_q(lam, q), grads, tree)
    expected = jax.tree.map(jnp.add, grads, expected_extra)
    tree_allclose(got, expected, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("q", EXPONENTS)
def test_equals_numpy_formula(q, tree):
    lam = 0.05
    zeros = jax.tree.map(jnp.zeros_like, tree)
    got = apply(optreg.add_decayed_weights_q(lam, q), zeros, tree)
    for w, g in zip(jax.tree.leaves(tree), jax.tree.leaves(got)):
        w = np.asarray(w, np.float64)
        np.testing.assert_allclose(np.asarray(g), lam * np.sign(w) * np.abs(w) ** (q - 1), rtol=2e-6)


def test_q2_matches_optax_add_decayed_weights(tree, grads):
    ours = apply(optreg.add_decayed_weights_q(1e-3, 2.0), grads, tree)
    theirs = apply(optax.add_decayed_weights(1e-3), grads, tree)
    tree_allclose(ours, theirs, rtol=1e-7, atol=0)


@pytest.mark.parametrize("q", [1.0, 1.5, 2.0, 0.5])
def test_jit_and_no_jit_agree(q, tree, grads):
    tx = optreg.add_decayed_weights_q(0.1, q)
    state = tx.init(tree)
    eager, _ = tx.update(grads, state, tree)
    jitted, _ = jax.jit(tx.update)(grads, state, tree)
    tree_allclose(eager, jitted, rtol=1e-6, atol=1e-7)


def test_vmap_over_a_batch_of_params():
    tx = optreg.add_decayed_weights_q(0.2, 1.5)
    params = jnp.linspace(-2.0, 2.0, 12).reshape(3, 4)
    state = tx.init(params[0])
    batched = jax.vmap(lambda p: tx.update(jnp.zeros_like(p), state, p)[0])(params)
    np.testing.assert_allclose(batched, 0.2 * np.sign(params) * np.sqrt(np.abs(params)), rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("q", [0.5, 1.0, 1.5, 2.0, 3.3])
def test_dtypes_and_shapes_kept(dtype, q):
    params = random_tree(3, dtype)
    grads = random_tree(4, dtype)
    updates = apply(optreg.add_decayed_weights_q(0.01, q), grads, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(updates, grads)
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


def test_closed_form_sgd_step_q2(tree, grads):
    """Zhang et al., Dive into Deep Learning §3.7: w ← (1 − ηλ)w − η∇L."""
    eta, lam = 0.1, 0.3
    tx = optax.chain(optreg.add_decayed_weights_q(lam, 2.0), optax.sgd(eta))
    new = optax.apply_updates(tree, apply(tx, grads, tree))
    for w, g, n in zip(jax.tree.leaves(tree), jax.tree.leaves(grads), jax.tree.leaves(new)):
        w, g = np.asarray(w, np.float64), np.asarray(g, np.float64)
        np.testing.assert_allclose(np.asarray(n), (1 - eta * lam) * w - eta * g, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("q", [1.0, 1.5, 3.0])
def test_closed_form_sgd_step_lq(q, tree, grads):
    """w ← w − η(∇L + λ·sign(w)|w|^(q−1))."""
    eta, lam = 0.05, 0.2
    tx = optax.chain(optreg.add_decayed_weights_q(lam, q), optax.sgd(eta))
    new = optax.apply_updates(tree, apply(tx, grads, tree))
    for w, g, n in zip(jax.tree.leaves(tree), jax.tree.leaves(grads), jax.tree.leaves(new)):
        w, g = np.asarray(w, np.float64), np.asarray(g, np.float64)
        np.testing.assert_allclose(np.asarray(n), w - eta * (g + lam * np.sign(w) * np.abs(w) ** (q - 1)), rtol=1e-5)


def run(tx, params, grads_fn, steps=5):
    state = tx.init(params)
    for k in range(steps):
        updates, state = tx.update(grads_fn(params, k), state, params)
        params = optax.apply_updates(params, updates)
    return params


def fake_grads(params, k):
    return jax.tree.map(lambda p: jnp.cos(p * (k + 1)), params)


def test_coupled_equals_decoupled_with_sgd(tree):
    """Loshchilov & Hutter (2019) Prop. 1: with SGD, L2 and decoupled decay (λ' = λ) coincide."""
    lam, eta = 0.1, 0.05
    coupled = optax.chain(optreg.add_decayed_weights_q(lam), optax.sgd(eta))
    decoupled = optax.chain(optax.identity(), optreg.add_decayed_weights_q(lam), optax.scale_by_learning_rate(eta))
    tree_allclose(run(coupled, tree, fake_grads), run(decoupled, tree, fake_grads), rtol=1e-6)


def test_decoupled_is_adamw_and_differs_from_coupled_adam(tree):
    """Prop. 2: with Adam they differ. The decoupled chain is exactly optax.adamw."""
    lam, eta = 0.1, 0.01
    decoupled = optax.chain(optax.scale_by_adam(), optreg.add_decayed_weights_q(lam), optax.scale_by_learning_rate(eta))
    coupled = optax.chain(optreg.add_decayed_weights_q(lam), optax.adam(eta))
    adamw = optax.adamw(eta, weight_decay=lam)
    ours = run(decoupled, tree, fake_grads)
    tree_allclose(ours, run(adamw, tree, fake_grads), rtol=1e-6)
    gap = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(run(coupled, tree, fake_grads)))
    )
    assert gap > 1e-3


def test_schedule_is_evaluated_at_the_step_count(tree):
    schedule = optax.linear_schedule(0.0, 1.0, transition_steps=4)
    tx = optreg.add_decayed_weights_q(schedule, 2.0)
    state = tx.init(tree)
    zeros = jax.tree.map(jnp.zeros_like, tree)
    update = jax.jit(tx.update)
    for k in range(6):
        out, state = update(zeros, state, tree)
        expected = min(k / 4, 1.0)
        tree_allclose(out, jax.tree.map(lambda w: expected * w, tree), rtol=1e-6, atol=1e-7)
    assert int(state.count) == 6


def test_inject_hyperparams_with_q_static(tree, grads):
    injected = optax.inject_hyperparams(optreg.add_decayed_weights_q, static_args=("q",))(weight_decay=0.3, q=1.5)
    state = injected.init(tree)
    got, state = jax.jit(injected.update)(grads, state, tree)
    tree_allclose(got, apply(optreg.add_decayed_weights_q(0.3, 1.5), grads, tree), rtol=1e-6)
    state.hyperparams["weight_decay"] = jnp.asarray(0.0)
    got, _ = jax.jit(injected.update)(grads, state, tree)
    tree_allclose(got, grads, rtol=0, atol=0)


def test_zero_weight_decay_returns_updates_exactly():
    params = {"w": jnp.array([0.0, 1e-30, -1e30, 3.0])}
    grads = {"w": jnp.array([1.0, -2.0, 3.0, 4.0])}
    for q in [0.3, 1.0, 2.0, 3.5]:
        out = apply(optreg.add_decayed_weights_q(0.0, q), grads, params)
        np.testing.assert_array_equal(out["w"], grads["w"])


@pytest.mark.parametrize("q", [0.1, 0.5, 0.9])
def test_small_q_is_finite_and_zero_at_zero(q):
    params = {"w": jnp.array([0.0, 2e-38, -2e-38, 1e-8, 1.0], jnp.float32)}  # smallest normal floats
    out = apply(optreg.add_decayed_weights_q(10.0, q), jax.tree.map(jnp.zeros_like, params), params)["w"]
    assert bool(jnp.all(jnp.isfinite(out)))
    assert float(out[0]) == 0.0
    assert float(out[1]) > 0 and float(out[2]) < 0
    np.testing.assert_allclose(out[4], 10.0, rtol=1e-6)


def test_mask_pytree_and_callable(tree, grads):
    mask = jax.tree.map(lambda x: x.ndim >= 2, tree)
    by_tree = apply(optreg.add_decayed_weights_q(0.5, 2.0, mask=mask), grads, tree)
    by_callable = apply(
        optreg.add_decayed_weights_q(0.5, 2.0, mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)), grads, tree
    )
    tree_allclose(by_tree, by_callable, rtol=0, atol=0)
    for w, g, u, m in zip(*(jax.tree.leaves(t) for t in (tree, grads, by_tree, mask))):
        np.testing.assert_allclose(u, g + 0.5 * w if m else g, rtol=1e-6)
    # optax's own masking gives the same
    tree_allclose(by_tree, apply(optax.add_decayed_weights(0.5, mask=mask), grads, tree), rtol=1e-6)


def test_prefix_mask(tree, grads):
    prefix = {"params": True, "extra": False}
    out = apply(optreg.add_decayed_weights_q(0.5, 2.0, mask=prefix), grads, tree)
    np.testing.assert_array_equal(out["extra"][0], grads["extra"][0])
    np.testing.assert_allclose(
        out["params"]["Dense_0"]["kernel"],
        grads["params"]["Dense_0"]["kernel"] + 0.5 * tree["params"]["Dense_0"]["kernel"],
        rtol=1e-6,
    )


def test_mismatched_mask_is_an_error(tree):
    tx = optreg.add_decayed_weights_q(0.5, 2.0, mask={"params": True})
    with pytest.raises(ValueError, match="mask does not match"):
        tx.init(tree)


@pytest.mark.parametrize(
    "kwargs, error, text",
    [
        ({"q": 0.0}, ValueError, "q must be"),
        ({"q": -1.0}, ValueError, "q must be"),
        ({"q": float("nan")}, ValueError, "q must be"),
        ({"q": "2"}, TypeError, "q must be a real number"),
        ({"q": True}, TypeError, "q must be a real number"),
        ({"q": jnp.asarray(2.0)}, TypeError, "static_args"),
        ({"weight_decay": -1e-4}, ValueError, "weight_decay must be finite and >= 0"),
        ({"weight_decay": float("nan")}, ValueError, "weight_decay"),
        ({"weight_decay": float("inf")}, ValueError, "weight_decay"),
        ({"weight_decay": jnp.ones(3)}, ValueError, "scalar"),
        ({"weight_decay": "0.1"}, TypeError, "weight_decay"),
        ({"weight_decay": lambda count: jnp.ones(3)}, ValueError, "schedule must return a scalar"),
        ({"eps": 0.0}, ValueError, "eps"),
    ],
)
def test_bad_arguments_raise_at_construction(kwargs, error, text):
    with pytest.raises(error, match=text):
        optreg.add_decayed_weights_q(**{"weight_decay": 0.1, **kwargs})


def test_update_without_params_says_how_to_fix(tree):
    tx = optreg.add_decayed_weights_q(0.1)
    with pytest.raises(ValueError, match="needs the current parameters"):
        tx.update(tree, tx.init(tree))


def test_integer_leaves_pass_through_and_complex_leaves_raise():
    params = {"w": jnp.ones(3), "step": jnp.array(3, jnp.int32)}
    out = apply(optreg.add_decayed_weights_q(1.0), params, params)
    assert out["step"].dtype == jnp.int32 and int(out["step"]) == 3
    with pytest.raises(TypeError, match="complex"):
        optreg.add_decayed_weights_q(1.0).init({"z": jnp.ones(2, jnp.complex64)})


def test_penalty_value_closed_form():
    params = {"a": jnp.array([3.0, -4.0]), "b": jnp.array([[1.0]])}
    np.testing.assert_allclose(optreg.lq_penalty(params, 0.5, 2.0), 0.5 / 2 * 26.0, rtol=1e-6)
    np.testing.assert_allclose(optreg.lq_penalty(params, 2.0, 1.0), 2.0 * 8.0, rtol=1e-6)
    np.testing.assert_allclose(optreg.lq_penalty(params, 1.0, 3.0, mask={"a": False, "b": True}), 1 / 3, rtol=1e-6)


def test_reciprocal_sqrt_is_accurate_over_all_normal_float32():
    """The fusible 1/√x behind q = 1.5 and q = 0.5, against float64 NumPy from the smallest normal to the largest."""
    from optreg._numerics import reciprocal_sqrt

    info = np.finfo(np.float32)
    x = np.concatenate([np.geomspace(info.tiny, info.max, 200_001, dtype=np.float64).astype(np.float32),
                        [info.tiny, info.max, 1.0, 4.0]])
    got = np.asarray(jax.jit(reciprocal_sqrt)(jnp.asarray(x)), np.float64)
    want = 1.0 / np.sqrt(x.astype(np.float64))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=2e-7, atol=0)
    assert reciprocal_sqrt(jnp.asarray(4.0, jnp.float16)).dtype == jnp.float16  # other dtypes: lax.rsqrt
