"""per_layer_decay, per_layer_penalty, describe and decay_mask on real linen and NNX modules."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tree_allclose
from flax import nnx
from flax.training import train_state

import optreg


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.Conv(4, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = nn.relu(x).reshape((x.shape[0], -1))
        x = nn.LayerNorm()(nn.Dense(8)(x))
        return nn.Dense(3)(x)


class NnxNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.linear1 = nnx.Linear(4 * 6 * 6, 8, rngs=rngs)
        self.norm = nnx.LayerNorm(8, rngs=rngs)
        self.linear2 = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn(self.conv(x))).reshape((x.shape[0], -1))
        return self.linear2(self.norm(self.linear1(x)))


X = jnp.ones((2, 6, 6, 1))
Y = jnp.array([0, 2])


@pytest.fixture(scope="module")
def linen_variables():
    return LinenNet().init(jax.random.key(0), X)


def zeros_like(tree):
    return jax.tree.map(jnp.zeros_like, tree)


def test_regex_rules_on_linen(linen_variables):
    params = linen_variables["params"]
    rules = {"Dense_0/kernel": 1e-2, "Conv_0": 3e-2, "Dense": 5e-3}
    tx = optreg.per_layer_decay(rules)
    updates, _ = tx.update(zeros_like(params), tx.init(params), params)
    expected = {"Dense_0": 1e-2, "Conv_0": 3e-2, "Dense_1": 5e-3}
    for layer, values in params.items():
        for name, weight in values.items():
            got = updates[layer][name]
            if name == "kernel":
                np.testing.assert_allclose(got, expected[layer] * weight, rtol=1e-6)
            else:  # biases, norm scales: the default decay_mask leaves them alone
                np.testing.assert_array_equal(got, 0.0)


def test_equals_grad_of_penalty_with_q(linen_variables):
    params = linen_variables["params"]
    rules = {"Dense_0/kernel": 1e-2, "Conv_0/kernel": 3e-2}
    tx = optreg.per_layer_decay(rules, q=1.5)
    grads = jax.tree.map(lambda p: jnp.sin(p + 1.0), params)
    updates, _ = tx.update(grads, tx.init(params), params)
    extra = jax.grad(lambda p: optreg.per_layer_penalty(p, rules, q=1.5))(params)
    tree_allclose(updates, jax.tree.map(jnp.add, grads, extra), rtol=1e-5, atol=1e-7)


def test_penalty_is_sum_over_layers_of_lq(linen_variables):
    params = linen_variables["params"]
    rules = {"Dense_0/kernel": 0.2, "Dense_1/kernel": 0.7}
    expected = sum(
        lam / 2 * float(jnp.sum(params[layer]["kernel"] ** 2)) for layer, lam in [("Dense_0", 0.2), ("Dense_1", 0.7)]
    )
    np.testing.assert_allclose(optreg.per_layer_penalty(params, rules), expected, rtol=1e-5)


def test_callable_and_pytree_forms_agree(linen_variables):
    params = linen_variables["params"]
    by_callable = optreg.per_layer_decay(lambda path, leaf: 0.1 if path.endswith("kernel") else None)
    pytree = jax.tree_util.tree_map_with_path(lambda path, _: 0.1 if path[-1].key == "kernel" else None, params)
    by_pytree = optreg.per_layer_decay(pytree)
    by_regex = optreg.per_layer_decay({"kernel": 0.1})
    grads = zeros_like(params)
    outs = [tx.update(grads, tx.init(params), params)[0] for tx in (by_callable, by_pytree, by_regex)]
    tree_allclose(outs[0], outs[1], rtol=0, atol=0)
    tree_allclose(outs[0], outs[2], rtol=0, atol=0)


def test_first_matching_rule_wins(linen_variables):
    params = linen_variables["params"]
    tx = optreg.per_layer_decay({"Dense_0/kernel": 0.5, "kernel": 0.1})
    updates, _ = tx.update(zeros_like(params), tx.init(params), params)
    np.testing.assert_allclose(updates["Dense_0"]["kernel"], 0.5 * params["Dense_0"]["kernel"], rtol=1e-6)
    np.testing.assert_allclose(updates["Dense_1"]["kernel"], 0.1 * params["Dense_1"]["kernel"], rtol=1e-6)


def test_rule_matching_nothing_lists_the_paths(linen_variables):
    tx = optreg.per_layer_decay({"Dense_7/kernel": 1e-3})
    with pytest.raises(ValueError, match=r"matches no parameter.*Dense_0/kernel"):
        tx.init(linen_variables["params"])


def test_rule_shadowed_by_an_earlier_rule_is_an_error(linen_variables):
    with pytest.raises(ValueError, match="'Dense_0' matches no parameter"):
        optreg.per_layer_decay({"Dense": 1e-3, "Dense_0": 1e-2}).init(linen_variables["params"])


def test_rule_matching_only_masked_parameters_is_an_error(linen_variables):
    params = linen_variables["params"]
    with pytest.raises(ValueError, match="Change the rule or the mask"):
        optreg.per_layer_decay({"bias": 1e-3}, mask=optreg.decay_mask).init(params)
    tx = optreg.per_layer_decay({"bias": 1e-3})  # mask=None, as optax: every leaf a rule selects
    updates, _ = tx.update(zeros_like(params), tx.init(params), params)
    np.testing.assert_allclose(updates["Dense_0"]["bias"], 1e-3 * params["Dense_0"]["bias"], rtol=1e-6)


@pytest.mark.parametrize(
    "weight_decays, error, text",
    [
        ({"Dense_0/kernel": -1.0}, ValueError, "must be finite and >= 0"),
        ({"Dense_[0": 1.0}, ValueError, "not a valid regular expression"),
        ({}, ValueError, "empty"),
        (None, TypeError, "weight_decays must be"),
    ],
)
def test_bad_rules_raise_at_construction(weight_decays, error, text):
    with pytest.raises(error, match=text):
        optreg.per_layer_decay(weight_decays)


def test_pytree_of_wrong_structure_is_an_error(linen_variables):
    tx = optreg.per_layer_decay({"Dense_0": {"kernel": 0.1}})
    with pytest.raises(ValueError, match="does not match the params' structure"):
        tx.init(linen_variables["params"])


def test_schedule_per_layer(linen_variables):
    params = linen_variables["params"]
    tx = optreg.per_layer_decay({"Dense_0/kernel": optax.linear_schedule(0.0, 1.0, 2), "Dense_1/kernel": 0.1})
    state = tx.init(params)
    update = jax.jit(tx.update)
    for k in range(3):
        out, state = update(zeros_like(params), state, params)
        np.testing.assert_allclose(
            out["Dense_0"]["kernel"], min(k / 2, 1.0) * params["Dense_0"]["kernel"], rtol=1e-6, atol=1e-8
        )
        np.testing.assert_allclose(out["Dense_1"]["kernel"], 0.1 * params["Dense_1"]["kernel"], rtol=1e-6)


def test_describe_shows_each_parameter(linen_variables):
    params = linen_variables["params"]
    tx = optreg.per_layer_decay({"Dense_0/kernel": 1e-3, "Conv_0": optax.constant_schedule(2e-3)},
                                mask=optreg.decay_mask)
    table = optreg.describe(tx, params)
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["path", "shape", "dtype", "weight_decay"]
    row = next(line for line in lines if line.startswith("Dense_0/kernel"))
    assert "(144, 8)" in row and "0.001" in row
    assert "schedule (0.002 at step 0)" in next(line for line in lines if line.startswith("Conv_0/kernel"))
    assert "masked out" in next(line for line in lines if line.startswith("Conv_0/bias"))
    assert "no rule matches" in next(line for line in lines if line.startswith("Dense_1/kernel"))
    assert table == optreg.describe({"Dense_0/kernel": 1e-3, "Conv_0": optax.constant_schedule(2e-3)}, params,
                                    mask=optreg.decay_mask)
    assert table == optreg.describe(optax.chain(tx, optax.adam(1e-3)), params)  # found inside a chain


def test_describe_finds_the_decay_inside_multi_steps_and_inject_hyperparams(linen_variables):
    """MultiSteps is an object, not a GradientTransformation, and inject_hyperparams builds the decay inside each
    update (no instance to find): describe was a pytree-structure error and "holds no per_layer_decay"."""
    params = linen_variables["params"]
    rules = {"Dense_0/kernel": 1e-3}
    expected = optreg.describe(rules, params)
    assert "0.001" in next(line for line in expected.splitlines() if line.startswith("Dense_0/kernel"))
    multi = optax.MultiSteps(optax.chain(optreg.per_layer_decay(rules), optax.adam(1e-3)), every_k_schedule=2)
    assert optreg.describe(multi, params) == expected
    for static in (("q", "weight_decays"), ("q",)):
        injected = optax.inject_hyperparams(optreg.per_layer_decay, static_args=static)(weight_decays=rules)
        assert optreg.describe(optax.chain(injected, optax.adam(1e-3)), params) == expected
    two = optax.chain(optreg.per_layer_decay(rules), optax.inject_hyperparams(optreg.per_layer_decay)(
        weight_decays={"Dense_1/kernel": 1e-2}))
    with pytest.raises(ValueError, match="holds 2 per_layer_decay transforms"):
        optreg.describe(two, params)


def test_linen_train_state_never_touches_batch_stats(linen_variables):
    state = train_state.TrainState.create(
        apply_fn=LinenNet().apply,
        params=linen_variables["params"],
        tx=optax.chain(optreg.per_layer_decay({"kernel": 1e-2}), optax.sgd(0.1)),
    )
    batch_stats = linen_variables["batch_stats"]

    @jax.jit
    def step(state, batch_stats):
        def loss_fn(params):
            logits, new_vars = state.apply_fn(
                {"params": params, "batch_stats": batch_stats}, X, mutable=["batch_stats"]
            )
            return optax.softmax_cross_entropy_with_integer_labels(logits, Y).mean(), new_vars["batch_stats"]

        grads, new_stats = jax.grad(loss_fn, has_aux=True)(state.params)
        return state.apply_gradients(grads=grads), new_stats, grads

    new_state, new_stats, grads = step(state, batch_stats)
    kernel, grad = state.params["Dense_0"]["kernel"], grads["Dense_0"]["kernel"]
    np.testing.assert_allclose(
        new_state.params["Dense_0"]["kernel"], kernel - 0.1 * (grad + 1e-2 * kernel), rtol=1e-5, atol=1e-7
    )
    bias, bias_grad = state.params["Dense_0"]["bias"], grads["Dense_0"]["bias"]
    np.testing.assert_allclose(new_state.params["Dense_0"]["bias"], bias - 0.1 * bias_grad, rtol=1e-6, atol=1e-8)
    # batch statistics are the model's own running averages, never regularized
    expected_stats = LinenNet().apply(linen_variables, X, mutable=["batch_stats"])[1]["batch_stats"]
    tree_allclose(new_stats, expected_stats, rtol=1e-6)


def test_nnx_optimizer_with_per_layer_decay():
    model = NnxNet(nnx.Rngs(0))
    rules = {"linear1/kernel": 1e-2, "conv/kernel": 1e-3}
    params = nnx.state(model, nnx.Param)
    assert "linear1/kernel" in optreg.describe(rules, params)
    optimizer = nnx.Optimizer(model, optax.chain(optreg.per_layer_decay(rules), optax.sgd(0.1)), wrt=nnx.Param)
    w0, v0 = np.array(model.linear1.kernel[...]), np.array(model.linear2.kernel[...])
    stats_before = np.array(model.bn.mean[...])
    batch_mean = np.asarray(model.conv(X).mean(axis=(0, 1, 2)))

    @nnx.jit
    def step(model, optimizer):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(X), Y).mean()

        grads = nnx.grad(loss_fn)(model)
        optimizer.update(model, grads)
        return grads["linear1"]["kernel"][...], grads["linear2"]["kernel"][...]

    g, gv = step(model, optimizer)
    np.testing.assert_allclose(model.linear1.kernel[...], w0 - 0.1 * (g + 1e-2 * w0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(model.linear2.kernel[...], v0 - 0.1 * gv, rtol=1e-5, atol=1e-7)
    # BatchStat variables are outside wrt=nnx.Param: only BatchNorm's own running average moved them
    expected_mean = 0.99 * stats_before + 0.01 * batch_mean
    np.testing.assert_allclose(model.bn.mean[...], expected_mean, rtol=1e-5, atol=1e-7)


def test_decay_mask_rule(linen_variables):
    mask = optreg.decay_mask(linen_variables)
    assert mask["params"]["Conv_0"]["kernel"] and mask["params"]["Dense_1"]["kernel"]
    assert not mask["params"]["Dense_0"]["bias"]
    assert not mask["params"]["LayerNorm_0"]["scale"]
    assert not any(jax.tree.leaves(mask["batch_stats"]))
    assert optreg.decay_mask({"embedding": jnp.ones((5, 3)), "step": jnp.ones((2, 2), jnp.int32)}) == {
        "embedding": True,
        "step": False,
    }


def test_decay_mask_in_optax_adamw_matches_optreg(linen_variables):
    params = linen_variables["params"]
    grads = jax.tree.map(lambda p: jnp.cos(p), params)
    theirs = optax.adamw(1e-2, weight_decay=0.1, mask=optreg.decay_mask)
    ours = optax.chain(
        optax.scale_by_adam(),
        optreg.add_decayed_weights_q(0.1, mask=optreg.decay_mask),
        optax.scale_by_learning_rate(1e-2),
    )
    a, _ = theirs.update(grads, theirs.init(params), params)
    b, _ = ours.update(grads, ours.init(params), params)
    tree_allclose(a, b, rtol=1e-6, atol=1e-9)


def test_decay_mask_on_nnx_state():
    mask = optreg.decay_mask(nnx.state(NnxNet(nnx.Rngs(0)), nnx.Param))
    flat = dict(zip(optreg._tree.leaf_paths(mask), jax.tree.leaves(mask)))
    assert flat["linear1/kernel"] and flat["conv/kernel"]
    assert not flat["linear1/bias"] and not flat["norm/scale"] and not flat["bn/scale"]


@pytest.mark.parametrize("q", [0.5, 0.7, 1.0])
def test_penalty_gradient_at_zero_weights_is_zero_like_the_transform(q):
    """|w|^q has its kink at w = 0, where the transform adds 0: the penalty's gradient was inf for q < 1."""
    params = {"w": jnp.array([0.0, 1.0, -2.0])}
    grad = np.asarray(jax.grad(lambda p: optreg.per_layer_penalty(p, {"w": 0.3}, q))(params)["w"])
    np.testing.assert_allclose(grad, [0.0, 0.3, -0.3 * 2.0 ** (q - 1)], rtol=1e-6)
    tx = optreg.per_layer_decay({"w": 0.3}, q=q)
    assert float(tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)[0]["w"][0]) == 0.0
