"""decay_towards and decay_towards_penalty: L2-SP (Li, Grandvalet & Davoine 2018) and anchors in the state."""

from __future__ import annotations

import pickle
import re

import chex
import flax.serialization
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


def pull_by_hand(w, a, lam, q):
    """λ·sign(w − a)·|w − a|^(q−1) in float64 NumPy."""
    d = np.asarray(w, np.float64) - np.asarray(a, np.float64)
    return lam * np.sign(d) * np.abs(d) ** (q - 1)


@pytest.fixture
def anchor():
    return random_tree(7)


@pytest.mark.parametrize("q", EXPONENTS)
def test_equals_the_rule_by_hand(q, tree, grads, anchor):
    got = apply(optreg.decay_towards(anchor, 0.3, q), grads, tree)
    for u, w, a, g in zip(*(jax.tree.leaves(t) for t in (grads, tree, anchor, got))):
        np.testing.assert_allclose(np.asarray(g), np.asarray(u, np.float64) + pull_by_hand(w, a, 0.3, q),
                                   rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("q", EXPONENTS)
def test_equals_grad_of_the_penalty(q, tree, grads, anchor):
    extra = jax.grad(optreg.decay_towards_penalty)(tree, anchor, 0.37, q)
    got = apply(optreg.decay_towards(anchor, 0.37, q), grads, tree)
    tree_allclose(got, jax.tree.map(jnp.add, grads, extra), rtol=2e-6, atol=1e-6)


def test_penalty_value_closed_form_and_against_finite_differences():
    params = {"a": jnp.array([3.0, -4.0]), "b": jnp.array([[1.0]])}
    anchor = {"a": jnp.array([1.0, 1.0]), "b": jnp.array([[3.0]])}
    np.testing.assert_allclose(optreg.decay_towards_penalty(params, anchor, 0.5), 0.5 / 2 * (4 + 25 + 4), rtol=1e-6)
    np.testing.assert_allclose(optreg.decay_towards_penalty(params, anchor, 2.0, 1.0), 2.0 * 9.0, rtol=1e-6)
    masked = optreg.decay_towards_penalty(params, anchor, 1.0, 3.0, mask={"a": False, "b": True})
    np.testing.assert_allclose(masked, 8 / 3, rtol=1e-6)
    with jax.enable_x64(True):
        w = {"a": jnp.array([0.3, -1.2, 2.0], jnp.float64)}
        a = {"a": jnp.array([1.0, 0.5, -0.5], jnp.float64)}
        direction = {"a": jnp.array([0.7, -0.2, 1.1], jnp.float64)}

        def f(x):
            return optreg.decay_towards_penalty(x, a, 0.8, 1.5)

        _, tangent = jax.jvp(f, (w,), (direction,))
        h = 1e-6
        shifted = [jax.tree.map(lambda x, d, s=s: x + s * h * d, w, direction) for s in (1, -1)]
        np.testing.assert_allclose(tangent, (f(shifted[0]) - f(shifted[1])) / (2 * h), rtol=1e-7)


def test_penalty_schedule_is_evaluated_at_count(tree, anchor):
    schedule = optax.linear_schedule(0.0, 1.0, transition_steps=4)
    for k in (0, 2, 7):
        np.testing.assert_allclose(optreg.decay_towards_penalty(tree, anchor, schedule, count=k),
                                   optreg.decay_towards_penalty(tree, anchor, min(k / 4, 1.0)), rtol=1e-6)


def test_closed_form_sgd_step_of_l2_sp(tree, grads, anchor):
    """w ← w − η(∇L + λ(w − w⁰)) (Li et al. 2018, eq. for L2-SP with plain SGD)."""
    eta, lam = 0.1, 0.3
    tx = optax.chain(optreg.decay_towards(anchor, lam), optax.sgd(eta))
    new = optax.apply_updates(tree, apply(tx, grads, tree))
    for w, g, a, n in zip(*(jax.tree.leaves(t) for t in (tree, grads, anchor, new))):
        w, g, a = (np.asarray(x, np.float64) for x in (w, g, a))
        np.testing.assert_allclose(np.asarray(n), w - eta * (g + lam * (w - a)), rtol=1e-6, atol=1e-7)


def test_zero_anchor_is_plain_weight_decay(tree, grads):
    zeros = jax.tree.map(jnp.zeros_like, tree)
    tree_allclose(apply(optreg.decay_towards(zeros, 1e-2), grads, tree),
                  apply(optax.add_decayed_weights(1e-2), grads, tree), rtol=1e-7, atol=0)


def test_init_anchor_is_a_copy_of_the_params_at_init(tree):
    tx = optax.chain(optreg.decay_towards("init", 0.5), optax.sgd(0.1))
    state = tx.init(tree)
    tree_allclose(state[0].anchor, tree, rtol=0, atol=0)

    @jax.jit
    def step(params, state):
        updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
        return optax.apply_updates(params, updates), state

    moved = jax.tree.map(lambda w: w + 1.0, tree)
    params, state = step(moved, state)
    # with no data gradient, SGD on 0.5/2·‖w − w₀‖² moves w − w₀ = 1 to 1 − 0.1·0.5
    tree_allclose(jax.tree.map(jnp.subtract, params, tree), jax.tree.map(lambda w: jnp.full_like(w, 0.95), tree),
                  rtol=1e-5, atol=1e-6)


def test_donated_params_do_not_delete_the_init_anchor(tree):
    tx = optreg.decay_towards("init", 0.1)
    params = jax.tree.map(jnp.copy, tree)
    state = tx.init(params)

    def step(params, state):
        updates, state = tx.update(params, state, params)
        return optax.apply_updates(params, updates), state

    params, state = jax.jit(step, donate_argnums=(0, 1))(params, state)
    params, state = jax.jit(step, donate_argnums=(0, 1))(params, state)
    tree_allclose(state.anchor, tree, rtol=0, atol=0)


def test_a_new_anchor_is_a_new_state_not_a_new_compilation(tree, grads, anchor):
    tx = optreg.decay_towards(anchor, 0.5)
    traces = []

    @jax.jit
    def update(updates, state, params):
        traces.append(1)
        return tx.update(updates, state, params)[0]

    state = tx.init(tree)
    first = update(grads, state, tree)
    other = jax.tree.map(lambda a: a + 1.0, state.anchor)
    second = update(grads, state._replace(anchor=other), tree)
    assert len(traces) == 1
    for f, s in zip(jax.tree.leaves(first), jax.tree.leaves(second)):
        np.testing.assert_allclose(np.asarray(s), np.asarray(f) - 0.5, rtol=1e-5, atol=1e-6)


def test_the_anchor_is_not_a_compiled_constant():
    """A parameter-sized anchor shows up as an argument of the compiled step, never as a literal."""
    params = {"w": jnp.linspace(-1.0, 1.0, 4096).reshape(64, 64)}
    anchor = {"w": jnp.full((64, 64), 0.25)}
    tx = optreg.decay_towards(anchor, 0.5)
    state = tx.init(params)

    def has_anchor_constant(function, *args):
        text = jax.jit(function).lower(*args).as_text()
        return re.search(r"constant dense<[^>]*> : tensor<64x64xf32>", text) is not None

    assert not has_anchor_constant(tx.update, params, state, params)
    # the check sees a constant where there is one: the same pull with the anchor closed over
    assert has_anchor_constant(lambda p: 0.5 * (p["w"] - anchor["w"]), params)


def test_tree_map_params_shards_the_anchor_like_the_params(tree):
    tx = optax.chain(optreg.decay_towards("init", 0.1), optax.adam(1e-3))
    state = tx.init(tree)
    specs = jax.tree_util.tree_map_with_path(lambda path, _: _tree.path_to_string(path), tree)
    derived = optax.tree_utils.tree_map_params(tx, lambda _, spec: spec, state, specs,
                                               transform_non_params=lambda _: "replicated")
    assert derived[0].anchor == specs
    assert derived[0].count == "replicated"
    assert derived[1][0].mu == specs  # Adam's moments, for comparison


def test_state_round_trips_through_checkpoints(tree, grads, anchor):
    tx = optreg.decay_towards(anchor, 0.2, 1.5)
    state = tx.init(tree)
    restored = flax.serialization.from_bytes(jax.tree.map(jnp.zeros_like, state), flax.serialization.to_bytes(state))
    assert isinstance(restored, optreg.AnchorState)
    tree_allclose(restored.anchor, anchor, rtol=0, atol=0)
    tree_allclose(tx.update(grads, restored, tree)[0], tx.update(grads, state, tree)[0], rtol=0, atol=0)
    unpickled = pickle.loads(pickle.dumps(jax.device_get(state)))
    tree_allclose(unpickled.anchor, anchor, rtol=0, atol=0)


def test_norm_scales_decay_towards_one():
    params = {"LayerNorm_0": {"scale": jnp.array([0.5, 1.0, 2.0]), "bias": jnp.array([0.1, 0.2, 0.3])},
              "Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}
    ones = jax.tree.map(jnp.ones_like, params)

    def is_scale(p):
        return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "scale", p)

    out = apply(optreg.decay_towards(ones, 0.1, mask=is_scale), jax.tree.map(jnp.zeros_like, params), params)
    np.testing.assert_allclose(out["LayerNorm_0"]["scale"], [-0.05, 0.0, 0.1], rtol=1e-6)
    for path in (("LayerNorm_0", "bias"), ("Dense_0", "kernel"), ("Dense_0", "bias")):
        np.testing.assert_array_equal(out[path[0]][path[1]], 0.0)


def test_mask_pytree_callable_and_prefix(tree, grads, anchor):
    flags = jax.tree.map(lambda x: x.ndim >= 2, tree)
    by_tree = apply(optreg.decay_towards(anchor, 0.5, mask=flags), grads, tree)
    by_function = apply(optreg.decay_towards(anchor, 0.5, mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)),
                        grads, tree)
    tree_allclose(by_tree, by_function, rtol=0, atol=0)
    for u, w, a, g, m in zip(*(jax.tree.leaves(t) for t in (grads, tree, anchor, by_tree, flags))):
        expected = np.asarray(u, np.float64) + (pull_by_hand(w, a, 0.5, 2.0) if m else 0.0)
        np.testing.assert_allclose(np.asarray(g), expected, rtol=1e-6, atol=1e-7)
    prefix = apply(optreg.decay_towards(anchor, 0.5, mask={"params": True, "extra": False}), grads, tree)
    np.testing.assert_array_equal(prefix["extra"][0], grads["extra"][0])


def test_equinox_modules_as_anchor_and_mask_are_data_not_functions():
    eqx = pytest.importorskip("equinox")
    model = eqx.nn.Linear(3, 2, key=jax.random.key(0))
    pretrained = eqx.nn.Linear(3, 2, key=jax.random.key(1))
    params = eqx.filter(model, eqx.is_array)
    anchor = eqx.filter(pretrained, eqx.is_array)
    assert callable(anchor)
    tx = optreg.decay_towards(anchor, 0.5)
    out = apply(tx, jax.tree.map(jnp.zeros_like, params), params)
    np.testing.assert_allclose(out.weight, 0.5 * (model.weight - pretrained.weight), rtol=1e-6)
    np.testing.assert_allclose(out.bias, 0.5 * (model.bias - pretrained.bias), rtol=1e-6)


def test_schedule_is_evaluated_at_the_step_count(tree, anchor):
    schedule = optax.linear_schedule(0.0, 1.0, transition_steps=4)
    tx = optreg.decay_towards(anchor, schedule)
    state = tx.init(tree)
    zeros = jax.tree.map(jnp.zeros_like, tree)
    step = jax.jit(tx.update)
    for k in range(6):
        out, state = step(zeros, state, tree)
        tree_allclose(out, jax.tree.map(lambda w, a: min(k / 4, 1.0) * (w - a), tree, anchor), rtol=1e-6, atol=1e-7)
    assert int(state.count) == 6


def test_inject_hyperparams(tree, grads):
    injected = optax.inject_hyperparams(optreg.decay_towards, static_args=("q",))(anchor="init", weight_decay=0.3,
                                                                                    q=1.5)
    state = injected.init(tree)
    moved = jax.tree.map(lambda w: 1.1 * w, tree)
    got, state = jax.jit(injected.update)(grads, state, moved)
    expected = apply_with_state(optreg.decay_towards(tree, 0.3, 1.5), grads, tree, moved)
    tree_allclose(got, expected, rtol=1e-6)
    state.hyperparams["weight_decay"] = jnp.asarray(0.0)
    got, _ = jax.jit(injected.update)(grads, state, moved)
    tree_allclose(got, grads, rtol=0, atol=0)


def apply_with_state(tx, updates, init_params, params):
    return tx.update(updates, tx.init(init_params), params)[0]


def test_jit_and_vmap(tree, grads, anchor):
    tx = optreg.decay_towards(anchor, 0.2, 1.5)
    state = tx.init(tree)
    tree_allclose(tx.update(grads, state, tree)[0], jax.jit(tx.update)(grads, state, tree)[0], rtol=1e-6, atol=1e-7)
    params = jnp.linspace(-2.0, 2.0, 12).reshape(3, 4)
    vtx = optreg.decay_towards(jnp.full(4, 0.5), 0.2, 1.5)
    batched = jax.vmap(lambda p: vtx.update(jnp.zeros_like(p), vtx.init(p), p)[0])(params)
    np.testing.assert_allclose(batched, pull_by_hand(params, 0.5, 0.2, 1.5), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_keeps_dtypes(dtype, anchor):
    params, updates = random_tree(3, dtype), random_tree(4, dtype)
    tx = optreg.decay_towards(anchor, 0.01)
    state = tx.init(params)
    chex.assert_trees_all_equal_shapes_and_dtypes(state.anchor, params)  # stored in the params' dtypes
    out = tx.update(updates, state, params)[0]
    chex.assert_trees_all_equal_shapes_and_dtypes(out, updates)
    for u, w, a, g in zip(*(jax.tree.leaves(t) for t in (updates, params, state.anchor, out))):
        expected = np.asarray(u, np.float64) + pull_by_hand(w.astype(jnp.float32), a.astype(jnp.float32), 0.01, 2.0)
        np.testing.assert_allclose(np.asarray(g, np.float64), expected, rtol=1e-2, atol=1e-3)


def test_no_nan_on_zeros_and_huge_values():
    params = {"w": jnp.array([0.0, 3e38, -3e38, 1.0])}
    anchor = {"w": jnp.array([0.0, -3e38, 3e38, 1.0])}
    updates = {"w": jnp.array([1.0, 2.0, 3.0, 4.0])}
    np.testing.assert_array_equal(apply(optreg.decay_towards(anchor, 0.0), updates, params)["w"], updates["w"])
    for q in (0.5, 1.0, 1.5, 2.0):
        out = apply(optreg.decay_towards(anchor, 1e-3, q), updates, params)["w"]
        assert bool(jnp.all(jnp.isfinite(out))), (q, out)
        assert float(out[0]) == 1.0 and float(out[3]) == 4.0


@pytest.mark.skipif(not hasattr(_tree, "flatten_updates"), reason="needs optreg._tree's None-update handling")
def test_none_updates_pass_through(tree, grads):
    grads = dict(grads, extra=[None, grads["extra"][1]])
    out = apply(optreg.decay_towards("init", 0.1), grads, tree)
    assert out["extra"][0] is None


@pytest.mark.parametrize(
    "kwargs, error, text",
    [
        ({"anchor": "pretrained"}, ValueError, "'init'"),
        ({"anchor": None}, TypeError, "pytree of arrays"),
        ({"anchor": lambda params: params}, TypeError, "never called"),
        ({"anchor": {}}, ValueError, "no arrays"),
        ({"anchor": {"w": "zeros"}}, TypeError, "anchor leaf 'w'"),
        ({"anchor": {"w": jnp.ones(2, jnp.complex64)}}, TypeError, "complex"),
        ({"weight_decay": -1e-4}, ValueError, "weight_decay must be finite and >= 0"),
        ({"weight_decay": jnp.ones(3)}, ValueError, "scalar"),
        ({"q": -1.0}, ValueError, "q must be"),
        ({"q": jnp.asarray(2.0)}, TypeError, "static_args"),
    ],
)
def test_bad_arguments_raise_at_construction(kwargs, error, text):
    with pytest.raises(error, match=text):
        optreg.decay_towards(**{"anchor": "init", "weight_decay": 0.1, **kwargs})


def test_an_anchor_that_does_not_fit_the_params_is_an_error_at_init(tree):
    with pytest.raises(ValueError, match="same pytree structure"):
        optreg.decay_towards({"params": tree["params"]}, 0.1).init(tree)
    wrong = jax.tree.map(lambda x: x, tree)
    wrong["params"]["Dense_0"]["kernel"] = jnp.zeros((4, 5))
    with pytest.raises(ValueError, match=r"params/Dense_0/kernel.*\(4, 5\).*\(5, 4\)"):
        optreg.decay_towards(wrong, 0.1).init(tree)
    with pytest.raises(ValueError, match="initial params themselves"):
        optreg.decay_towards_penalty(tree, "init", 0.1)


def test_update_without_params_says_how_to_fix(tree):
    tx = optreg.decay_towards("init", 0.1)
    with pytest.raises(ValueError, match="needs the current parameters"):
        tx.update(tree, tx.init(tree))


@pytest.mark.parametrize("q", [0.5, 0.7, 1.0, 1.5])
def test_penalty_gradient_at_the_anchor_is_zero_like_the_transform(q):
    """At w = a (every weight at L2-SP's first step) |w − a|^q has its kink: the transform adds g_q(0) = 0, and the
    penalty's gradient must be that 0 (it was NaN for q < 1 and λ for q = 1)."""
    w = {"w": jnp.array([0.0, 1.0, -2.0])}
    anchor = {"w": jnp.array([0.0, 1.0, 0.5])}
    grad = np.asarray(jax.grad(optreg.decay_towards_penalty)(w, anchor, 0.3, q)["w"])
    np.testing.assert_allclose(grad, [0.0, 0.0, pull_by_hand(-2.0, 0.5, 0.3, q)], rtol=1e-6)
    added = apply(optreg.decay_towards(anchor, 0.3, q), jax.tree.map(jnp.zeros_like, w), w)["w"]
    np.testing.assert_array_equal(np.asarray(added)[:2], 0.0)


def test_an_unfiltered_equinox_model_is_refused_naming_the_filter():
    """An MLP's activation function is a leaf: copying it into the anchor failed inside jnp.array."""
    eqx = pytest.importorskip("equinox")
    model = eqx.nn.MLP(3, 2, 4, 1, key=jax.random.key(0))
    with pytest.raises(TypeError, match=r"params leaf 'activation' is not an array.*eqx.filter\(model, eqx.is_array\)"):
        optreg.decay_towards("init", 0.1).init(model)
    with pytest.raises(TypeError, match=r"anchor leaf 'activation'.*eqx.filter\(model, eqx.is_array\)"):
        optreg.decay_towards(model, 0.1).init(eqx.filter(model, eqx.is_array))
