"""independent_weight_decay: decay the learning rate does not scale (Loshchilov & Hutter 2019; Wortsman et al. 2023)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import random_tree, tree_allclose

import optreg
from optreg import _tree

EXPONENTS = [0.5, 1.0, 1.5, 2.0, 3.0]


def apply(tx, updates, params):
    updates, _ = tx.update(updates, tx.init(params), params)
    return updates


def by_hand(u, w, rate, q):
    w = np.asarray(w, np.float64)
    return np.asarray(u, np.float64) - rate * np.sign(w) * np.abs(w) ** (q - 1)


@pytest.mark.parametrize("q", EXPONENTS)
def test_equals_the_rule_by_hand(q, tree, grads):
    got = apply(optreg.independent_weight_decay(0.01, q), grads, tree)
    for u, w, g in zip(*(jax.tree.leaves(t) for t in (grads, tree, got))):
        np.testing.assert_allclose(np.asarray(g), by_hand(u, w, 0.01, q), rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("q", EXPONENTS)
def test_subtracts_rate_times_the_gradient_of_the_unit_lq_penalty(q, tree, grads):
    def unit_penalty(params):  # (1/q)·Σ|w|^q, written here
        return sum(jnp.sum(jnp.abs(w) ** q) / q for w in jax.tree.leaves(params))

    gradient = jax.grad(unit_penalty)(tree)
    got = apply(optreg.independent_weight_decay(0.2, q), grads, tree)
    tree_allclose(got, jax.tree.map(lambda u, d: u - 0.2 * d, grads, gradient), rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("learning_rate", [1e-4, 1e-2, 1.0])
def test_the_decay_does_not_depend_on_the_learning_rate(learning_rate, tree, grads):
    """params + u' − (params + u) = −rate·w whatever the learning rate; AdamW's decay is lr·λ·w."""
    rate = 0.01
    tx = optax.chain(optax.adam(learning_rate), optreg.independent_weight_decay(rate))
    plain = apply(optax.adam(learning_rate), grads, tree)
    decay = jax.tree.map(jnp.subtract, apply(tx, grads, tree), plain)
    rounding = 4e-7 * learning_rate  # (u − r·w) − u in float32, with |u| ≈ the learning rate
    tree_allclose(decay, jax.tree.map(lambda w: -rate * w, tree), rtol=1e-6, atol=rounding)
    adamw = jax.tree.map(jnp.subtract, apply(optax.adamw(learning_rate, weight_decay=rate), grads, tree), plain)
    tree_allclose(adamw, jax.tree.map(lambda w: -learning_rate * rate * w, tree), rtol=1e-5, atol=rounding)


def test_closed_form_sgd_step(tree, grads):
    """w ← (1 − r)·w − η·g."""
    eta, rate = 0.1, 0.02
    new = optax.apply_updates(tree, apply(optax.chain(optax.sgd(eta), optreg.independent_weight_decay(rate)),
                                          grads, tree))
    for w, g, n in zip(*(jax.tree.leaves(t) for t in (tree, grads, new))):
        w, g = np.asarray(w, np.float64), np.asarray(g, np.float64)
        np.testing.assert_allclose(np.asarray(n), (1 - rate) * w - eta * g, rtol=1e-6, atol=1e-7)


def test_with_the_schedule_multiplier_it_is_adamw_algorithm_2(tree):
    """Loshchilov & Hutter (2019), Algorithm 2: x ← x − η_t(α·m̂/(√v̂+ε) + λ·x), η_t the schedule multiplier.

    optax.adamw(α·η_t, weight_decay=λ/α) takes exactly that step; so does Adam with learning rate α·η_t
    followed by independent decay at rate λ·η_t.
    """
    alpha, lam = 0.05, 0.01
    multiplier = optax.cosine_decay_schedule(1.0, decay_steps=8, alpha=0.1)
    ours = optax.chain(optax.adam(lambda k: alpha * multiplier(k)),
                       optreg.independent_weight_decay(lambda k: lam * multiplier(k)))
    reference = optax.adamw(lambda k: alpha * multiplier(k), weight_decay=lam / alpha)

    def run(tx):
        params, state = tree, tx.init(tree)
        for k in range(8):
            grads = jax.tree.map(lambda w, k=k: jnp.cos(w * (k + 1)), params)
            updates, state = tx.update(grads, state, params)
            params = optax.apply_updates(params, updates)
        return params

    tree_allclose(run(ours), run(reference), rtol=1e-5, atol=1e-7)


def test_mask_pytree_callable_and_prefix(tree, grads):
    flags = jax.tree.map(lambda x: x.ndim >= 2, tree)
    by_tree = apply(optreg.independent_weight_decay(0.5, mask=flags), grads, tree)
    by_function = apply(optreg.independent_weight_decay(0.5, mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)),
                        grads, tree)
    tree_allclose(by_tree, by_function, rtol=0, atol=0)
    for u, w, g, m in zip(*(jax.tree.leaves(t) for t in (grads, tree, by_tree, flags))):
        np.testing.assert_allclose(g, by_hand(u, w, 0.5, 2.0) if m else u, rtol=1e-6)
    prefix = apply(optreg.independent_weight_decay(0.5, mask={"params": True, "extra": False}), grads, tree)
    np.testing.assert_array_equal(prefix["extra"][0], grads["extra"][0])


def test_schedule_is_evaluated_at_the_step_count(tree):
    schedule = optax.linear_schedule(0.0, 1.0, transition_steps=4)
    tx = optreg.independent_weight_decay(schedule)
    state = tx.init(tree)
    zeros = jax.tree.map(jnp.zeros_like, tree)
    step = jax.jit(tx.update)
    for k in range(6):
        out, state = step(zeros, state, tree)
        tree_allclose(out, jax.tree.map(lambda w: -min(k / 4, 1.0) * w, tree), rtol=1e-6, atol=1e-7)


def test_inject_hyperparams_with_q_static(tree, grads):
    injected = optax.inject_hyperparams(optreg.independent_weight_decay, static_args=("q",))(rate=0.3, q=1.5)
    state = injected.init(tree)
    got, state = jax.jit(injected.update)(grads, state, tree)
    tree_allclose(got, apply(optreg.independent_weight_decay(0.3, 1.5), grads, tree), rtol=1e-6)
    state.hyperparams["rate"] = jnp.asarray(0.0)
    got, _ = jax.jit(injected.update)(grads, state, tree)
    tree_allclose(got, grads, rtol=0, atol=0)


def test_jit_and_vmap(tree, grads):
    tx = optreg.independent_weight_decay(0.2, 1.5)
    state = tx.init(tree)
    tree_allclose(tx.update(grads, state, tree)[0], jax.jit(tx.update)(grads, state, tree)[0], rtol=1e-6, atol=1e-7)
    params = jnp.linspace(-2.0, 2.0, 12).reshape(3, 4)
    batched = jax.vmap(lambda p: tx.update(jnp.zeros_like(p), tx.init(p), p)[0])(params)
    np.testing.assert_allclose(batched, by_hand(0.0, params, 0.2, 1.5), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_keeps_dtypes(dtype):
    params, updates = random_tree(3, dtype), random_tree(4, dtype)
    out = apply(optreg.independent_weight_decay(1e-3, 2.0), updates, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, updates)
    for u, w, g in zip(*(jax.tree.leaves(t) for t in (updates, params, out))):
        np.testing.assert_allclose(np.asarray(g, np.float64), by_hand(u.astype(jnp.float32), w.astype(jnp.float32),
                                   1e-3, 2.0), rtol=1e-2, atol=1e-3)


def test_no_nan_on_zeros_and_huge_values():
    params = {"w": jnp.array([0.0, -0.0, 3e38, -3e38, 1e-45])}
    updates = jax.tree.map(jnp.zeros_like, params)
    for q in (0.5, 1.0, 1.5, 2.0):
        out = apply(optreg.independent_weight_decay(1e-3, q), updates, params)["w"]
        assert bool(jnp.all(jnp.isfinite(out))), (q, out)
        assert float(out[0]) == 0.0


@pytest.mark.skipif(not hasattr(_tree, "flatten_updates"), reason="needs optreg._tree's None-update handling")
def test_none_updates_pass_through(tree, grads):
    grads = dict(grads, extra=[None, grads["extra"][1]])
    assert apply(optreg.independent_weight_decay(0.1), grads, tree)["extra"][0] is None


@pytest.mark.parametrize(
    "kwargs, error, text",
    [
        ({"rate": -1e-4}, ValueError, "rate must be finite and >= 0"),
        ({"rate": float("inf")}, ValueError, "rate"),
        ({"rate": jnp.ones(3)}, ValueError, "scalar"),
        ({"rate": lambda count: jnp.ones(2)}, ValueError, "schedule must return a scalar"),
        ({"q": 0.0}, ValueError, "q must be"),
        ({"q": jnp.asarray(2.0)}, TypeError, "static_args"),
    ],
)
def test_bad_arguments_raise_at_construction(kwargs, error, text):
    with pytest.raises(error, match=text):
        optreg.independent_weight_decay(**{"rate": 0.1, **kwargs})


def test_update_without_params_says_how_to_fix(tree):
    tx = optreg.independent_weight_decay(0.1)
    with pytest.raises(ValueError, match="needs the current parameters"):
        tx.update(tree, tx.init(tree))
