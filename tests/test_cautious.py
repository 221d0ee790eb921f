"""add_cautious_weight_decay: against the hand-written rule, jax.grad, Algorithm 1 of Chen et al. (2025) and optax."""

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


def cautious_by_hand(u, w, lam, q):
    """Chen et al. 2025, Algorithm 1, in float64 NumPy: u + λ·sign(w)|w|^(q−1) where u·w >= 0."""
    u, w = np.asarray(u, np.float64), np.asarray(w, np.float64)
    decay = lam * np.sign(w) * np.abs(w) ** (q - 1) if q >= 1 else lam * np.sign(w) * np.abs(w) ** (q - 1.0)
    return u + np.where(u * w >= 0, decay, 0.0)


def penalty(params, lam, q):
    """(λ/q)·Σ|w|^q, written here, independently of optreg."""
    return sum(lam / q * jnp.sum(jnp.abs(w) ** q) for w in jax.tree.leaves(params))


@pytest.mark.parametrize("q", EXPONENTS)
def test_equals_the_rule_by_hand(q, tree, grads):
    lam = 0.3
    got = apply(optreg.add_cautious_weight_decay(lam, q), grads, tree)
    for u, w, g in zip(*(jax.tree.leaves(t) for t in (grads, tree, got))):
        np.testing.assert_allclose(np.asarray(g), cautious_by_hand(u, w, lam, q), rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("q", EXPONENTS)
def test_adds_grad_of_the_penalty_where_signs_agree(q, tree, grads):
    lam = 0.37
    gradient = jax.grad(penalty)(tree, lam, q)
    got = apply(optreg.add_cautious_weight_decay(lam, q), grads, tree)
    for u, w, d, g in zip(*(jax.tree.leaves(t) for t in (grads, tree, gradient, got))):
        keep = np.asarray(u) * np.asarray(w) >= 0
        np.testing.assert_allclose(np.asarray(g), np.asarray(u) + np.where(keep, np.asarray(d), 0.0), rtol=2e-6,
                                   atol=1e-7)
    # both kinds of coordinate occur in the fixture
    signs = np.concatenate([np.ravel(np.asarray(u) * np.asarray(w)) for u, w in zip(jax.tree.leaves(grads),
                                                                                     jax.tree.leaves(tree))])
    assert (signs > 0).any() and (signs < 0).any()


def test_the_papers_mask_at_zero_update_and_zero_weight():
    """𝕀(u ⊙ x ≥ 0): u = 0 is decayed (as AdamW), opposite signs are not, w = 0 adds nothing."""
    params = {"w": jnp.array([2.0, 2.0, 2.0, -2.0, -2.0, 0.0, 0.0])}
    updates = {"w": jnp.array([1.0, 0.0, -1.0, -1.0, 1.0, 1.0, -1.0])}
    out = apply(optreg.add_cautious_weight_decay(0.5), updates, params)["w"]
    np.testing.assert_allclose(out, [2.0, 1.0, -1.0, -2.0, 1.0, 1.0, -1.0], rtol=1e-7)
    tiny = {"w": jnp.array([1e-30, -1e-30])}
    opposing = {"w": jnp.array([-1e-30, 1e-30])}
    out = apply(optreg.add_cautious_weight_decay(1.0), opposing, tiny)["w"]
    np.testing.assert_array_equal(out, opposing["w"])  # opposite signs although u·w underflows to −0


def adam_with_cautious_decay_numpy(params, grads_fn, steps, lr, lam, b1=0.9, b2=0.999, eps=1e-8):
    """Algorithm 1 of Chen et al. (2025) around Adam (Kingma & Ba 2015), written out in float64 NumPy."""
    x = np.asarray(params, np.float64)
    m = np.zeros_like(x)
    v = np.zeros_like(x)
    for t in range(1, steps + 1):
        g = np.asarray(grads_fn(x, t - 1), np.float64)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        u = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        x = x - lr * (u + lam * (u * x >= 0) * x)
    return x


def test_in_the_decoupled_place_it_is_algorithm_1_with_adam():
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=64).astype(np.float32)
    target = rng.normal(size=64).astype(np.float32)

    def grads_fn(x, k):
        return (x - target) * (1.0 + 0.1 * k)

    lr, lam, steps = 0.05, 0.5, 12
    tx = optax.chain(optax.scale_by_adam(), optreg.add_cautious_weight_decay(lam), optax.scale_by_learning_rate(lr))
    params, state = jnp.asarray(x0), None
    state = tx.init(params)
    for k in range(steps):
        updates, state = tx.update(jnp.asarray(grads_fn(np.asarray(params), k), jnp.float32), state, params)
        params = optax.apply_updates(params, updates)
    expected = adam_with_cautious_decay_numpy(x0, grads_fn, steps, lr, lam)
    np.testing.assert_allclose(np.asarray(params), expected, rtol=1e-4, atol=1e-5)
    plain = optax.adamw(lr, weight_decay=lam)
    p, s = jnp.asarray(x0), plain.init(jnp.asarray(x0))
    for k in range(steps):
        updates, s = plain.update(jnp.asarray(grads_fn(np.asarray(p), k), jnp.float32), s, p)
        p = optax.apply_updates(p, updates)
    assert float(jnp.max(jnp.abs(p - params))) > 1e-3  # it is not AdamW


def test_where_every_sign_agrees_it_is_optax_add_decayed_weights(tree):
    updates = jax.tree.map(lambda w: 0.3 * w, tree)  # u·w > 0 everywhere
    ours = apply(optreg.add_cautious_weight_decay(1e-2), updates, tree)
    tree_allclose(ours, apply(optax.add_decayed_weights(1e-2), updates, tree), rtol=1e-7, atol=0)
    opposite = jax.tree.map(lambda w: -0.3 * w, tree)  # u·w < 0 everywhere: nothing added
    tree_allclose(apply(optreg.add_cautious_weight_decay(1e-2), opposite, tree), opposite, rtol=0, atol=0)


def test_mask_pytree_callable_and_prefix(tree, grads):
    flags = jax.tree.map(lambda x: x.ndim >= 2, tree)
    by_tree = apply(optreg.add_cautious_weight_decay(0.5, mask=flags), grads, tree)
    by_function = apply(optreg.add_cautious_weight_decay(0.5, mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)),
                        grads, tree)
    tree_allclose(by_tree, by_function, rtol=0, atol=0)
    for u, w, g, m in zip(*(jax.tree.leaves(t) for t in (grads, tree, by_tree, flags))):
        np.testing.assert_allclose(g, cautious_by_hand(u, w, 0.5, 2.0) if m else u, rtol=1e-6)
    prefix = apply(optreg.add_cautious_weight_decay(0.5, mask={"params": True, "extra": False}), grads, tree)
    np.testing.assert_array_equal(prefix["extra"][0], grads["extra"][0])
    with pytest.raises(ValueError, match="mask does not match"):
        optreg.add_cautious_weight_decay(0.5, mask={"params": True}).init(tree)


def test_schedule_is_evaluated_at_the_step_count(tree):
    schedule = optax.linear_schedule(0.0, 1.0, transition_steps=4)
    tx = optreg.add_cautious_weight_decay(schedule)
    state = tx.init(tree)
    updates = jax.tree.map(lambda w: 0.1 * w, tree)
    step = jax.jit(tx.update)
    for k in range(6):
        out, state = step(updates, state, tree)
        tree_allclose(out, jax.tree.map(lambda w: 0.1 * w + min(k / 4, 1.0) * w, tree), rtol=1e-6, atol=1e-7)


def test_inject_hyperparams_with_q_static(tree, grads):
    injected = optax.inject_hyperparams(optreg.add_cautious_weight_decay, static_args=("q",))(weight_decay=0.3, q=1.5)
    state = injected.init(tree)
    got, state = jax.jit(injected.update)(grads, state, tree)
    tree_allclose(got, apply(optreg.add_cautious_weight_decay(0.3, 1.5), grads, tree), rtol=1e-6)
    state.hyperparams["weight_decay"] = jnp.asarray(0.0)
    got, _ = jax.jit(injected.update)(grads, state, tree)
    tree_allclose(got, grads, rtol=0, atol=0)


def test_jit_and_vmap(tree, grads):
    tx = optreg.add_cautious_weight_decay(0.2, 1.5)
    state = tx.init(tree)
    eager, _ = tx.update(grads, state, tree)
    jitted, _ = jax.jit(tx.update)(grads, state, tree)
    tree_allclose(eager, jitted, rtol=1e-6, atol=1e-7)
    params = jnp.linspace(-2.0, 2.0, 12).reshape(3, 4)
    updates = jnp.cos(7.0 * params)
    batched = jax.vmap(lambda u, p: tx.update(u, tx.init(p), p)[0])(updates, params)
    np.testing.assert_allclose(batched, cautious_by_hand(updates, params, 0.2, 1.5), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("q", [1.0, 2.0, 3.0])
def test_half_precision_keeps_dtypes_and_matches_float32(dtype, q):
    params, updates = random_tree(3, dtype), random_tree(4, dtype)
    out = apply(optreg.add_cautious_weight_decay(0.01, q), updates, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, updates)
    for u, w, g in zip(*(jax.tree.leaves(t) for t in (updates, params, out))):
        np.testing.assert_allclose(np.asarray(g, np.float64), cautious_by_hand(u.astype(jnp.float32),
                                   w.astype(jnp.float32), 0.01, q), rtol=1e-2, atol=1e-3)


def test_no_nan_on_zeros_and_huge_values():
    params = {"w": jnp.array([0.0, -0.0, 3e38, -3e38, 1e-45, 2.0])}
    updates = {"w": jnp.array([0.0, 1.0, 1.0, -1.0, 1.0, jnp.inf])}
    for q in (0.5, 1.0, 1.5, 2.0):
        out = apply(optreg.add_cautious_weight_decay(1e-3, q), updates, params)["w"]
        assert not bool(jnp.any(jnp.isnan(out))), (q, out)
        assert bool(jnp.all(jnp.isfinite(out[:5]))), (q, out)


def test_jvp_with_respect_to_the_weights_matches_finite_differences():
    with jax.enable_x64(True):
        w = jnp.array([0.7, -1.3, 2.1, -0.4], jnp.float64)
        u = jnp.array([0.5, 0.2, -0.3, -0.1], jnp.float64)
        direction = jnp.array([1.0, -0.5, 0.3, 2.0], jnp.float64)
        tx = optreg.add_cautious_weight_decay(0.3, 1.5)

        def f(weights):
            return tx.update(u, tx.init(weights), weights)[0]

        _, tangent = jax.jvp(f, (w,), (direction,))
        h = 1e-6
        numeric = (f(w + h * direction) - f(w - h * direction)) / (2 * h)
        np.testing.assert_allclose(tangent, numeric, rtol=1e-7, atol=1e-9)


@pytest.mark.skipif(not hasattr(_tree, "flatten_updates"), reason="needs optreg._tree's None-update handling")
def test_none_updates_pass_through(tree, grads):
    grads = dict(grads, extra=[None, grads["extra"][1]])
    out = apply(optreg.add_cautious_weight_decay(0.1), grads, tree)
    assert out["extra"][0] is None


@pytest.mark.parametrize(
    "kwargs, error, text",
    [
        ({"weight_decay": -1e-4}, ValueError, "weight_decay must be finite and >= 0"),
        ({"weight_decay": float("nan")}, ValueError, "weight_decay"),
        ({"weight_decay": jnp.ones(3)}, ValueError, "scalar"),
        ({"weight_decay": "0.1"}, TypeError, "weight_decay"),
        ({"q": 0.0}, ValueError, "q must be"),
        ({"q": "2"}, TypeError, "q must be a real number"),
        ({"q": jnp.asarray(2.0)}, TypeError, "static_args"),
        ({"eps": -1.0}, ValueError, "eps"),
    ],
)
def test_bad_arguments_raise_at_construction(kwargs, error, text):
    with pytest.raises(error, match=text):
        optreg.add_cautious_weight_decay(**{"weight_decay": 0.1, **kwargs})


def test_weight_decay_is_required_and_options_are_keyword_only():
    with pytest.raises(TypeError):
        optreg.add_cautious_weight_decay()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        optreg.add_cautious_weight_decay(0.1, 2.0, None)  # type: ignore[misc]


def test_update_without_params_says_how_to_fix(tree):
    tx = optreg.add_cautious_weight_decay(0.1)
    with pytest.raises(ValueError, match="needs the current parameters"):
        tx.update(tree, tx.init(tree))
