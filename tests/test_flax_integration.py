"""optreg inside real Flax training loops: NNX (``nnx.Optimizer``) and linen (``TrainState``).

Each regularizer runs in a jitted train step; batch statistics are never
regularised; an optimizer state holding optreg states survives an Orbax
checkpoint and training continues bit-identically.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state

import optreg

LEARNING_RATE = 1e-2
BATCH = 16


def _batch(seed: int = 0) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(BATCH, 8)).astype(np.float32)
    y = rng.integers(0, 3, size=BATCH).astype(np.int32)
    return jnp.asarray(x), jnp.asarray(y)


# ---------------------------------------------------------------------------
# The regularizers under test, each as a full optimizer chain.
# ---------------------------------------------------------------------------


def _per_layer() -> optax.GradientTransformation:
    return optax.chain(
        optreg.per_layer_decay({"Dense_0/kernel|linear1/kernel": 1e-2, "Dense_1/kernel|linear2/kernel": 1e-3}),
        optax.sgd(LEARNING_RATE),
    )


def _decay_mask() -> optax.GradientTransformation:
    return optax.chain(optreg.add_decayed_weights_q(1e-2, mask=optreg.decay_mask), optax.sgd(LEARNING_RATE))


def _soft_share() -> optax.GradientTransformation:
    prior = optreg.soft_share_prior(1e-2, 5, mode="exact", mask=optreg.decay_mask)
    return optax.chain(prior, optax.sgd(LEARNING_RATE))


def _proximal_l1() -> optax.GradientTransformation:
    return optax.chain(optax.sgd(LEARNING_RATE), optreg.proximal_lq(LEARNING_RATE, 1e-1, q=1))


REGULARIZERS = {
    "per_layer_decay": _per_layer,
    "decay_mask": _decay_mask,
    "soft_share_prior": _soft_share,
    "proximal_l1": _proximal_l1,
}

# ---------------------------------------------------------------------------
# linen
# ---------------------------------------------------------------------------


class LinenNet(nn.Module):
    """Dense -> BatchNorm -> Dense; ``Dense_0``, ``BatchNorm_0``, ``Dense_1``."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = nn.Dense(16)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        return nn.Dense(3)(nn.relu(x))


class LinenState(train_state.TrainState):
    batch_stats: dict


def _linen_state(tx: optax.GradientTransformation) -> LinenState:
    model = LinenNet()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8)), train=False)
    return LinenState.create(
        apply_fn=model.apply, params=variables["params"], batch_stats=variables["batch_stats"], tx=tx
    )


@jax.jit
def _linen_step(state: LinenState, x: jax.Array, y: jax.Array) -> LinenState:
    def loss_fn(params):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates

    grads, updates = jax.grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads=grads).replace(batch_stats=updates["batch_stats"])


@jax.jit
def _linen_unregularized_step(state: LinenState, x: jax.Array, y: jax.Array) -> tuple[dict, dict]:
    """The plain SGD step of the same loss, written out, as the reference."""

    def loss_fn(params):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates

    grads, updates = jax.grad(loss_fn, has_aux=True)(state.params)
    params = jax.tree.map(lambda p, g: p - LEARNING_RATE * g, state.params, grads)
    return params, updates["batch_stats"]


@pytest.mark.parametrize("name", sorted(REGULARIZERS))
def test_linen_train_state_jitted_step(name: str) -> None:
    state = _linen_state(REGULARIZERS[name]())
    x, y = _batch()
    plain_params, plain_stats = _linen_unregularized_step(state, x, y)
    new = _linen_step(state, x, y)

    # Batch statistics come from the forward pass only: the regularizer never touches them.
    jax.tree.map(np.testing.assert_array_equal, new.batch_stats, plain_stats)
    # The regularizer changed the kernels (it did something) ...
    kernel_moved = [
        not np.allclose(new.params[layer]["kernel"], plain_params[layer]["kernel"], rtol=0, atol=1e-9)
        for layer in ("Dense_0", "Dense_1")
    ]
    assert any(kernel_moved), name
    # ... and everything stays finite, with shapes and dtypes kept.
    for leaf in jax.tree.leaves(new.params):
        assert np.all(np.isfinite(leaf))
    for new_leaf, old_leaf in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params)):
        assert new_leaf.shape == old_leaf.shape and new_leaf.dtype == old_leaf.dtype, name
    assert int(new.step) == 1


def test_linen_decay_mask_leaves_biases_and_norm_scale_alone() -> None:
    state = _linen_state(_decay_mask())
    x, y = _batch()
    plain_params, _ = _linen_unregularized_step(state, x, y)
    new = _linen_step(state, x, y)
    for path in (("Dense_0", "bias"), ("Dense_1", "bias"), ("BatchNorm_0", "scale"), ("BatchNorm_0", "bias")):
        got, want = new.params, plain_params
        for key in path:
            got, want = got[key], want[key]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-7, err_msg="/".join(path))
    # The kernel gets exactly the coupled decay: w - lr*(g + λw).
    old = state.params["Dense_0"]["kernel"]
    np.testing.assert_allclose(
        new.params["Dense_0"]["kernel"], plain_params["Dense_0"]["kernel"] - LEARNING_RATE * 1e-2 * old, atol=1e-7
    )


def test_regularizers_on_a_full_variable_dict_skip_batch_stats() -> None:
    """A user who hands the whole variable dict (params + batch_stats) to the
    transform still gets zero change on the statistics."""
    model = LinenNet()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8)), train=False)
    variables = jax.tree.map(lambda v: v + 0.5, variables)  # nonzero statistics
    zeros = jax.tree.map(jnp.zeros_like, variables)
    transforms = [
        optreg.add_decayed_weights_q(1.0, mask=optreg.decay_mask),
        optreg.per_layer_decay({"kernel": 1.0}),
    ]
    transforms.append(optreg.proximal_lq(1.0, 1.0, q=1, mask=optreg.decay_mask))
    transforms.append(optreg.soft_share_prior(1.0, 5, mode="exact", mask=optreg.decay_mask))
    for tx in transforms:
        updates, _ = jax.jit(tx.update)(zeros, tx.init(variables), variables)
        for key in ("mean", "var"):
            np.testing.assert_array_equal(updates["batch_stats"]["BatchNorm_0"][key], 0.0)
        assert np.any(np.asarray(updates["params"]["Dense_0"]["kernel"]) != 0.0)


def test_a_transform_that_would_act_on_batch_stats_is_refused_with_the_fix() -> None:
    """Unmasked, or with a rule matching them, a transform decayed BatchNorm's running statistics silently."""
    variables = jax.tree.map(lambda v: v + 0.5, LinenNet().init(jax.random.key(0), jnp.zeros((1, 8)), train=False))
    for tx in (optreg.add_decayed_weights_q(1e-3, q=1.0), optreg.per_layer_decay({"kernel": 1e-3, "BatchNorm": 1e-2}),
               optreg.decay_towards("init", 0.1), optreg.add_cautious_weight_decay(0.1)):
        with pytest.raises(ValueError, match=r"running statistics \('batch_stats/BatchNorm_0/.*variables\['params'\]"
                                             r".*mask=optreg.decay_mask"):
            tx.init(variables)
    table = optreg.describe({"kernel": 1e-3, "BatchNorm": 1e-2}, variables)  # describe shows, it does not act
    assert "batch_stats/BatchNorm_0/mean" in table


# ---------------------------------------------------------------------------
# NNX
# ---------------------------------------------------------------------------


class NnxNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.linear1 = nnx.Linear(8, 16, rngs=rngs)
        self.norm = nnx.BatchNorm(16, momentum=0.9, rngs=rngs)
        self.linear2 = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear2(nnx.relu(self.norm(self.linear1(x))))


@nnx.jit
def _nnx_step(model: NnxNet, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
    def loss_fn(model):
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def _nnx_reference(x: jax.Array, y: jax.Array) -> tuple[nnx.State, nnx.State]:
    """Plain SGD on the same model, the reference for what the regularizer must not touch."""
    model = NnxNet(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(LEARNING_RATE), wrt=nnx.Param)
    _nnx_step(model, optimizer, x, y)
    return nnx.state(model, nnx.Param), nnx.state(model, nnx.BatchStat)


@pytest.mark.parametrize("name", sorted(REGULARIZERS))
def test_nnx_optimizer_jitted_step(name: str) -> None:
    tx = REGULARIZERS[name]()
    x, y = _batch()
    plain_params, plain_stats = _nnx_reference(x, y)
    model = NnxNet(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    loss = _nnx_step(model, optimizer, x, y)
    assert np.isfinite(loss)

    stats = nnx.state(model, nnx.BatchStat)
    jax.tree.map(np.testing.assert_array_equal, stats, plain_stats)
    params = nnx.state(model, nnx.Param)
    moved = not np.allclose(params["linear1"]["kernel"][...], plain_params["linear1"]["kernel"][...], atol=1e-9)
    moved |= not np.allclose(params["linear2"]["kernel"][...], plain_params["linear2"]["kernel"][...], atol=1e-9)
    assert moved, name
    for leaf in jax.tree.leaves(params):
        assert np.all(np.isfinite(leaf))


def test_nnx_per_layer_decay_paths_and_exact_update() -> None:
    x, y = _batch()
    plain_params, _ = _nnx_reference(x, y)
    model = NnxNet(nnx.Rngs(0))
    before = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    per_layer = optreg.per_layer_decay({"linear1/kernel": 0.5, "linear2/kernel": 0.25})
    table = optreg.describe(per_layer, nnx.state(model, nnx.Param))
    assert "linear1/kernel" in table and "norm/scale" in table
    tx = optax.chain(per_layer, optax.sgd(LEARNING_RATE))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    _nnx_step(model, optimizer, x, y)
    after = nnx.state(model, nnx.Param)
    for layer, lam in (("linear1", 0.5), ("linear2", 0.25)):
        want = plain_params[layer]["kernel"][...] - LEARNING_RATE * lam * before[layer]["kernel"]
        np.testing.assert_allclose(after[layer]["kernel"][...], want, atol=1e-7)
        np.testing.assert_allclose(after[layer]["bias"][...], plain_params[layer]["bias"][...], atol=1e-7)
    np.testing.assert_allclose(after["norm"]["scale"][...], plain_params["norm"]["scale"][...], atol=1e-7)


# ---------------------------------------------------------------------------
# Orbax checkpointing
# ---------------------------------------------------------------------------


def _checkpoint_chain(first_kernel: str) -> optax.GradientTransformation:
    """A chain holding several optreg states (counts, schedules, mixture parameters)."""
    parts = [
        optreg.per_layer_decay({first_kernel: 1e-2}, q=1.5),
        optreg.add_decayed_weights_q(optax.cosine_decay_schedule(1e-2, 20), mask=optreg.decay_mask),
        optreg.soft_share_prior(1e-2, 5, mode="exact", mask=optreg.decay_mask),
        optax.adam(1e-2),
        optreg.proximal_lq(1e-2, 1e-2, q=1, mask=optreg.decay_mask),
    ]
    return optax.chain(*parts)


def test_orbax_checkpoint_restores_and_training_continues_bit_identically(tmp_path) -> None:
    import orbax.checkpoint as ocp

    tx = _checkpoint_chain("Dense_0/kernel")
    state = _linen_state(tx)
    batches = [_batch(seed) for seed in range(6)]
    for x, y in batches[:3]:
        state = _linen_step(state, x, y)

    saved = {"params": state.params, "batch_stats": state.batch_stats, "opt_state": state.opt_state, "step": state.step}
    path = tmp_path / "checkpoint"
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, saved)
    with ocp.StandardCheckpointer() as checkpointer:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _fresh_target(tx))
        restored = checkpointer.restore(path, abstract)

    assert jax.tree.structure(restored) == jax.tree.structure(saved)
    jax.tree.map(np.testing.assert_array_equal, restored, saved)
    resumed = state.replace(
        params=restored["params"],
        batch_stats=restored["batch_stats"],
        opt_state=restored["opt_state"],
        step=restored["step"],
    )
    for x, y in batches[3:]:
        state = _linen_step(state, x, y)
        resumed = _linen_step(resumed, x, y)
    jax.tree.map(np.testing.assert_array_equal, resumed.params, state.params)
    jax.tree.map(np.testing.assert_array_equal, resumed.opt_state, state.opt_state)


def _fresh_target(tx: optax.GradientTransformation) -> dict:
    """The pytree Orbax restores into: a freshly initialised state of the same chain."""
    fresh = _linen_state(tx)
    return {"params": fresh.params, "batch_stats": fresh.batch_stats, "opt_state": fresh.opt_state, "step": fresh.step}


def test_orbax_checkpoint_of_nnx_optimizer_state(tmp_path) -> None:
    import orbax.checkpoint as ocp

    def build() -> tuple[NnxNet, nnx.Optimizer]:
        model = NnxNet(nnx.Rngs(0))
        return model, nnx.Optimizer(model, _checkpoint_chain("linear1/kernel"), wrt=nnx.Param)

    model, optimizer = build()
    batches = [_batch(seed) for seed in range(5)]
    for x, y in batches[:2]:
        _nnx_step(model, optimizer, x, y)
    path = tmp_path / "nnx"
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, {"model": nnx.state(model), "optimizer": nnx.state(optimizer)})

    resumed_model, resumed_optimizer = build()
    target = {"model": nnx.state(resumed_model), "optimizer": nnx.state(resumed_optimizer)}
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(path, abstract)
    nnx.update(resumed_model, restored["model"])
    nnx.update(resumed_optimizer, restored["optimizer"])
    jax.tree.map(np.testing.assert_array_equal, nnx.state(resumed_optimizer), nnx.state(optimizer))
    jax.tree.map(np.testing.assert_array_equal, nnx.state(resumed_model), nnx.state(model))

    for x, y in batches[2:]:
        _nnx_step(model, optimizer, x, y)
        _nnx_step(resumed_model, resumed_optimizer, x, y)
    jax.tree.map(np.testing.assert_array_equal, nnx.state(resumed_optimizer), nnx.state(optimizer))
    jax.tree.map(np.testing.assert_array_equal, nnx.state(resumed_model), nnx.state(model))


# ---------------------------------------------------------------------------
# The worked examples in examples/ run (one epoch each)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("script", ["nnx_training.py", "linen_training.py"])
def test_example_script_trains(script: str, capsys) -> None:
    import runpy
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / script
    namespace = runpy.run_path(str(path), run_name="example")
    accuracy = namespace["main"](epochs=1)
    assert 0.5 < accuracy <= 1.0  # ten classes; one epoch of Adam is far above chance
    assert "test accuracy" in capsys.readouterr().out
