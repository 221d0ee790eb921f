"""soft_share_compress: the one-call pipeline on tiny models (seconds), its contract and its storage floor."""

from __future__ import annotations

import itertools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optreg

RNG = np.random.default_rng(0)
X = RNG.normal(size=(512, 12)).astype(np.float32)
TEACHER = RNG.normal(size=(12, 3)).astype(np.float32)
Y = np.argmax(X @ TEACHER, axis=1).astype(np.int32)


def init(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"hidden": {"kernel": jnp.asarray(0.3 * rng.normal(size=(12, 48)), jnp.float32),
                       "bias": jnp.asarray(0.01 * rng.normal(size=48), jnp.float32)},
            "out": {"kernel": jnp.asarray(0.3 * rng.normal(size=(48, 3)), jnp.float32),
                    "bias": jnp.zeros(3, jnp.float32)},
            "step": jnp.asarray(7, jnp.int32)}


def loss_fn(params: dict, batch: tuple) -> jax.Array:
    x, y = batch
    hidden = jax.nn.relu(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
    logits = hidden @ params["out"]["kernel"] + params["out"]["bias"]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


def batches(seed: int = 0, batch_size: int = 32):
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(X))
        for start in range(0, len(X), batch_size):
            index = order[start:start + batch_size]
            yield X[index], Y[index]


def accuracy(params: dict) -> float:
    hidden = np.maximum(X @ np.asarray(params["hidden"]["kernel"]) + np.asarray(params["hidden"]["bias"]), 0)
    logits = hidden @ np.asarray(params["out"]["kernel"]) + np.asarray(params["out"]["bias"])
    return float(np.mean(np.argmax(logits, 1) == Y))


@pytest.fixture(scope="module")
def trained() -> dict:
    """A network trained with Adam on the teacher's labels."""
    import optax

    params = init()
    floats = {k: v for k, v in params.items() if k != "step"}
    tx = optax.adam(1e-2)
    state = tx.init(floats)

    @jax.jit
    def step(p, s, batch):
        g = jax.grad(lambda p: loss_fn({**p, "step": params["step"]}, batch))(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    stream = batches(1)
    for _ in range(500):
        floats, state = step(floats, state, next(stream))
    return {**floats, "step": params["step"]}


@pytest.fixture(scope="module")
def compressed(trained):
    calls = []
    out = optreg.soft_share_compress(loss_fn, trained, batches(2), num_examples=len(X), steps=300,
                                     finetune_steps=300, min_rate=None, callback=lambda *args: calls.append(args))
    return out, calls


def test_the_stored_network_takes_only_its_codebooks_values_and_exact_zeros(compressed, trained):
    out, _ = compressed
    assert jax.tree.structure(out.params) == jax.tree.structure(trained)
    for path in ("hidden/kernel", "hidden/bias", "out/kernel", "out/bias"):
        leaf = np.asarray(out.params[path.split("/")[0]][path.split("/")[1]])
        assert leaf.dtype == np.float32 and leaf.shape == np.shape(trained[path.split("/")[0]][path.split("/")[1]])
        assert set(np.unique(leaf[leaf != 0])) == set(out.codebooks[path]) and len(out.codebooks[path]) <= 7
    assert int(out.params["step"]) == 7  # a non-floating leaf is kept as it was
    assert out.report == optreg.compression_report(out.params)
    assert out.report.nonzero_fraction < 0.5


def test_accuracy_free_outcome_is_reported(compressed, trained):
    out, calls = compressed
    assert set(out.losses) == {"start", "retrained", "snapped", "final"}
    assert all(np.isfinite(v) for v in out.losses.values())
    assert [d.path for d in out.diagnostics] == ["hidden/bias", "hidden/kernel", "out/bias", "out/kernel"]
    for d in out.diagnostics:
        assert 0 <= d.far_fraction <= 1 and 0 <= d.zero_fraction <= 1 and d.far_sigmas == 3.0
    assert isinstance(out.state, optreg.MixtureState) and out.state.means.shape == (8,)
    assert jax.tree.map(bool, out.state.mask) == {"hidden": {"kernel": True, "bias": True},
                                                  "out": {"kernel": True, "bias": True}, "step": False}
    assert [c[0] for c in calls].count("retrain") == 300 and [c[0] for c in calls].count("finetune") == 300
    # the compressed network still solves the task it was trained on (baseline ~97% on these 512 points)
    # without a storage floor the prior alone prunes this tiny network (771 weights) to ~1/3 non-zeros and the
    # fine-tuned quantised network keeps its accuracy (1.0 -> 0.986 when written)
    assert accuracy(trained) > 0.95 and accuracy(out.params) > 0.93


def test_the_storage_floor_is_met_exactly():
    out = optreg.soft_share_compress(loss_fn, init(3), batches(4), num_examples=len(X), steps=60, finetune_steps=60,
                                     min_rate=jnp.asarray(70.0))  # a 0-d array is its number
    assert out.report.compression_rate >= 70.0
    assert optreg.compression_report(out.params).compression_rate == out.report.compression_rate


@pytest.mark.parametrize("outputs, floor", [(200, 40.0), (400, 40.0 * np.sqrt(25_600 / 18_000)), (800, 64.0)])
def test_the_default_floor_grows_with_the_number_of_quantised_weights(outputs, floor):
    """min_rate="auto": 40x up to 18 000 quantised weights, 40·√(N / 18 000) beyond, at most 64x. A least-squares
    layer of 64 x outputs weights under a prior too weak and a zero component too small to zero much is pruned
    to its floor."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 64)).astype(np.float32)
    w = jnp.asarray(rng.normal(size=(64, outputs)) / 8.0, jnp.float32)
    y = x @ np.asarray(w)
    data = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)]
    out = optreg.soft_share_compress(lambda p, b: jnp.mean((b[0] @ p["w"] - b[1]) ** 2), {"w": w}, data,
                                     num_examples=256, steps=20, finetune_steps=20, weight_decay=1e-9,
                                     zero_mixing=0.3, max_rate=None)
    assert floor <= out.report.compression_rate <= 1.05 * floor


def test_the_rate_control_lowers_the_zero_proportion_when_the_prior_compresses_beyond_max_rate(compressed, trained):
    """The unsteered run (min_rate=None, the default ceiling far above) keeps π_0 = 0.997 and stores at
    ~3x; asking for at most 1.5x must lower π_0 and give a denser network."""
    free, _ = compressed
    steered = optreg.soft_share_compress(loss_fn, trained, batches(2), num_examples=len(X), steps=300,
                                         finetune_steps=300, min_rate=None, max_rate=1.5)
    zero_proportion = lambda out: float(np.exp(np.asarray(out.state.mixing_logits)[0]))  # noqa: E731
    assert zero_proportion(free) == pytest.approx(0.997, rel=1e-5)
    assert zero_proportion(steered) < 0.99
    assert steered.report.nonzero_fraction > free.report.nonzero_fraction
    assert steered.report.compression_rate < free.report.compression_rate


def test_a_floor_too_high_for_the_network_warns_with_the_fix(trained):
    """771 weights stored at 100x keep a handful of non-zeros: the loss rises far beyond 0.05 nats."""
    with pytest.warns(optreg.CompressionWarning, match=r"a rise of more.*below its floor min_rate=100.*lower min_rate"
                      ) as caught:
        out = optreg.soft_share_compress(loss_fn, trained, batches(8), num_examples=len(X), steps=60,
                                         finetune_steps=60, min_rate=100.0)
    assert out.losses["final"] - out.losses["start"] > 0.05
    assert out.report.compression_rate >= 100.0
    assert caught[0].filename == __file__  # points at the caller's line


def test_a_prior_that_takes_needed_weights_warns_without_blaming_the_floor(trained):
    """No floor, a prior ten thousand times Ullrich et al.'s strength: the loss rises, and the message says why."""
    with pytest.warns(optreg.CompressionWarning, match=r"The prior itself .* lower weight_decay"):
        out = optreg.soft_share_compress(loss_fn, trained, batches(8), num_examples=len(X), steps=60,
                                         finetune_steps=20, min_rate=None, weight_decay=50.0)
    assert out.losses["final"] - out.losses["start"] > 0.05


def test_a_network_lost_in_retraining_is_blamed_on_the_retraining_not_on_the_floor(trained):
    """A retraining step of 3 (Adam) wrecks the float network before any snap or pruning; the fine-tune
    recovers part of it, and the floor is not the cause."""
    with pytest.warns(optreg.CompressionWarning, match=r"while retraining: the float network's loss had risen.*"
                                                       r"learning_rate=3\)"):
        out = optreg.soft_share_compress(loss_fn, trained, batches(8), num_examples=len(X), steps=60,
                                         finetune_steps=20, learning_rate=3.0)
    assert out.losses["retrained"] - out.losses["start"] > 0.05
    assert out.losses["final"] - out.losses["retrained"] <= 0.05


@pytest.mark.parametrize("settings", [{"min_rate": 100.0, "warn_loss_rise": None},
                                      {"min_rate": 100.0, "warn_loss_rise": 1e6},
                                      {"min_rate": None, "steps": 300, "finetune_steps": 300}])
def test_no_warning_when_turned_off_allowed_or_the_loss_kept(trained, settings):
    settings = {"steps": 60, "finetune_steps": 60, **settings}
    with warnings.catch_warnings():
        warnings.simplefilter("error", optreg.CompressionWarning)
        out = optreg.soft_share_compress(loss_fn, trained, batches(8), num_examples=len(X), **settings)
    assert np.isfinite(out.losses["final"])
    if "warn_loss_rise" not in settings:
        assert out.losses["final"] - out.losses["start"] <= 0.05


BIASES_LEFT_OUT = {"hidden": {"kernel": True, "bias": False}, "out": {"kernel": True, "bias": False}, "step": False}


def test_a_floor_the_leaves_left_out_of_the_mask_forbid_is_refused_before_training(trained):
    """The 51 biases left out store at 32 bits: 771 weights can never be stored at more than 771 / 51 = 15.1x."""
    with pytest.raises(ValueError, match=r"min_rate=16 cannot be met.*cap the whole network's rate at 15.1x.*"
                                         r"min_rate='auto' \(11.2x here"):
        optreg.soft_share_compress(loss_fn, trained, batches(8), num_examples=len(X), mask=BIASES_LEFT_OUT,
                                   min_rate=16)


def test_a_floor_that_leaves_the_quantised_leaves_few_bits_warns_before_training(trained):
    """14x over 771 weights allows 1 762 bits, 1 632 of them the 51 float biases': 720 weights at 176.8x."""
    with pytest.warns(optreg.CompressionWarning, match=r"min_rate=14 with 51 floating weights .*93 % of the bits.*"
                                                       r"720 quantised weights for 176.8x"):
        optreg.soft_share_compress(loss_fn, trained, batches(8), num_examples=len(X), mask=BIASES_LEFT_OUT,
                                   min_rate=14, steps=20, finetune_steps=20, warn_loss_rise=None)


def test_the_automatic_floor_holds_the_quantised_leaves_to_40x_and_counts_the_float_ones_on_top(trained):
    """Without a mask 720 + 51 weights would be held to 40x; with the biases at 32 bits the quantised kernels
    are: the whole network's floor is 771 / (720 / 40 + 51) = 11.17x (it was 40x, which only pruning every
    kernel could approach)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", optreg.CompressionWarning)
        out = optreg.soft_share_compress(loss_fn, trained, batches(8), num_examples=len(X), mask=BIASES_LEFT_OUT,
                                         steps=200, finetune_steps=200, warn_loss_rise=None)
    kernels = [layer for layer in out.report.layers if layer.quantized]
    assert sum(layer.size for layer in kernels) == 720
    assert 32 * 720 / sum(layer.bits for layer in kernels) >= 40.0
    assert out.report.compression_rate >= 771 / (720 / 40 + 51)
    assert out.report.nonzero - 51 > 0.02 * 720  # kernels not pruned away


def test_batchnorm_running_statistics_are_refused_with_the_fix(trained):
    from flax import nnx

    stats = {"BatchNorm_0": {"mean": jnp.zeros(3), "var": jnp.ones(3)}}
    with pytest.raises(ValueError, match=r"'batch_stats/BatchNorm_0/mean' is layer state .*batch_stats collection.*"
                                         r"variables\['params'\]"):
        optreg.soft_share_compress(loss_fn, {"params": trained, "batch_stats": stats}, batches(8),
                                   num_examples=len(X))
    _, state = nnx.split(nnx.BatchNorm(3, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"'mean' is layer state .*nnx.split\(model, nnx.Param"):
        optreg.soft_share_compress(lambda p, b: 0.0, state, batches(8), num_examples=len(X))


def test_a_loss_that_becomes_nan_stops_the_call_instead_of_returning_a_nan_network(trained):
    """A variance-like leaf the loss takes the square root of is driven below 0 (as a BatchNorm variance
    fine-tuned as a float would be)."""
    params = {**trained, "variance": jnp.full(4, 0.05, jnp.float32)}
    rooted = lambda p, b: loss_fn(p, b) + jnp.sum(jnp.sqrt(p["variance"]))  # noqa: E731
    with pytest.raises(FloatingPointError, match=r"became nan while retraining with the prior.*learning_rate=0.01"):
        optreg.soft_share_compress(rooted, params, batches(8), num_examples=len(X), steps=300, finetune_steps=20)
    float_variance = {**BIASES_LEFT_OUT, "variance": False}
    with pytest.raises(FloatingPointError, match=r"became nan while fine-tuning.*finetune_learning_rate=0.03"):
        optreg.soft_share_compress(rooted, params, batches(8), num_examples=len(X), steps=5, finetune_steps=300,
                                   mask=float_variance, min_rate=None)
    with pytest.raises(ValueError, match=r"loss_fn of the input params .* is nan"):
        optreg.soft_share_compress(lambda p, b: loss_fn(p, b) * jnp.nan, trained, batches(8), num_examples=len(X))


def test_a_one_shot_source_shorter_than_an_epoch_warns_that_it_is_replayed(trained):
    two = [(X[i:i + 64], Y[i:i + 64]) for i in (0, 64)]
    with pytest.warns(UserWarning, match="ended after 2 batches, fewer than the 8 of one epoch"):
        optreg.soft_share_compress(loss_fn, trained, iter(two), num_examples=len(X), steps=10, finetune_steps=10,
                                   min_rate=None)


def test_a_floor_above_the_default_ceiling_raises_the_ceiling():
    out = optreg.soft_share_compress(loss_fn, init(3), batches(4), num_examples=len(X), steps=30, finetune_steps=30,
                                     min_rate=90.0)
    assert out.report.compression_rate >= 90.0


def test_leaves_outside_the_mask_stay_float_and_count_32_bits():
    params = init(5)
    out = optreg.soft_share_compress(loss_fn, params, batches(6), num_examples=len(X), steps=40, finetune_steps=40,
                                     mask=BIASES_LEFT_OUT, min_rate=None)
    layers = {layer.path: layer for layer in out.report.layers}
    assert not layers["hidden/bias"].quantized and layers["hidden/bias"].bits == 32 * 48
    assert layers["hidden/kernel"].quantized and set(out.codebooks) == {"hidden/kernel", "out/kernel"}


def test_a_finite_one_shot_iterator_is_replayed_and_a_list_restarted():
    params = init(7)
    one_epoch = [(X[i:i + 64], Y[i:i + 64]) for i in range(0, len(X), 64)]  # 8 batches
    for source in (iter(one_epoch), one_epoch):
        out = optreg.soft_share_compress(loss_fn, params, source, num_examples=len(X), steps=20, finetune_steps=20,
                                         min_rate=None)
        assert np.isfinite(out.losses["final"])


@pytest.mark.parametrize("kwargs, message", [
    ({"num_examples": 0}, "num_examples"),
    ({"num_examples": 512, "zero_mixing": 1.0}, "zero_mixing"),
    ({"num_examples": 512, "steps": -3}, "steps"),
    ({"num_examples": 512, "num_components": 1}, "num_components"),
    ({"num_examples": 512, "min_rate": -1.0}, "min_rate"),
    ({"num_examples": 512, "min_rate": "high"}, "min_rate must be 'auto'"),
    ({"num_examples": 512, "max_rate": "none"}, "max_rate must be 'auto'"),
    ({"num_examples": 512, "min_rate": 100.0, "max_rate": 80.0}, "max_rate must be >= min_rate"),
    ({"num_examples": 512, "max_rate": 0.0}, "max_rate"),
    ({"num_examples": 512, "warn_loss_rise": -0.1}, "warn_loss_rise must be a finite number > 0"),
    ({"num_examples": 512, "min_rate": 50.0, "max_rate": 45.0}, "max_rate must be >= min_rate"),
    ({"num_examples": 512, "mask": {"hidden": False, "out": False, "step": False}}, "no floating leaf"),
])
def test_bad_arguments_name_themselves(kwargs, message):
    with pytest.raises(ValueError, match=message):
        optreg.soft_share_compress(loss_fn, init(), batches(), **kwargs)


@pytest.mark.parametrize("params, source, kwargs, error, message", [
    (None, None, {"num_examples": "512"}, ValueError, "num_examples must be an int >= 1, got num_examples='512'"),
    (None, 5, {"num_examples": 512}, TypeError, "batches must be an iterable of batches .* got int"),
    (None, X, {"num_examples": 512}, TypeError, r"got one array of shape \(512, 12\)"),
    ({"w": jnp.ones((12, 3)), "activation": jax.nn.relu}, None, {"num_examples": 512}, TypeError,
     "leaf 'activation' is a .* not an array.*eqx.partition"),
    ({"w": jnp.ones((12, 3)).at[0, 0].set(jnp.nan)}, None, {"num_examples": 512}, ValueError,
     "leaf 'w' has non-finite values"),
])
def test_bad_inputs_are_refused_naming_what_to_pass(params, source, kwargs, error, message):
    with pytest.raises(error, match=message):
        optreg.soft_share_compress(loss_fn, init() if params is None else params,
                                   batches() if source is None else source, **kwargs)


def test_an_empty_iterable_is_an_error():
    with pytest.raises(ValueError, match="no batch"):
        optreg.soft_share_compress(loss_fn, init(), [], num_examples=10)


def test_the_finetune_step_is_held_while_pruning_then_decays_to_zero_on_a_cosine():
    from optreg._soft_share_compress import _finetune_schedule

    schedule, steps = _finetune_schedule(0.03, 3000), 3000  # pruning ends at step 1500
    for step in (0, 700, 1499):
        np.testing.assert_allclose(schedule(step), 0.03, rtol=1e-6)
    for step in (1500, 1875, 2250, 2999, 3000):  # 0.015·(1 + cos(π·t / 1500)), t = step − 1500
        expected = 0.015 * (1.0 + np.cos(np.pi * (step - 1500) / 1500))
        np.testing.assert_allclose(schedule(step), expected, rtol=1e-5, atol=1e-9)
    assert float(schedule(steps)) == pytest.approx(0.0, abs=1e-9)


def test_validation_batches_choose_the_stored_network_by_early_stopping(trained, monkeypatch):
    """The fine-tune runs the same steps with and without validation batches (they are only evaluated): the
    stored network is the checkpoint that did best on them (0.151 when written), the run without them stores
    the last (0.212)."""
    from optreg import _soft_share_compress as module

    rng = np.random.default_rng(7)
    x_val = rng.normal(size=(256, 12)).astype(np.float32)
    held_out = [(x_val, np.argmax(x_val @ TEACHER, axis=1).astype(np.int32))]
    options = dict(num_examples=len(X), steps=200, finetune_steps=400, min_rate=8.0)
    last = optreg.soft_share_compress(loss_fn, trained, batches(5), **options)
    evaluated = []
    mean_loss = module._mean_loss

    def recording(loss, values, held):
        value = mean_loss(loss, values, held)
        if held[0] is held_out[0]:
            evaluated.append(value)
        return value

    monkeypatch.setattr(module, "_mean_loss", recording)
    chosen = optreg.soft_share_compress(loss_fn, trained, batches(5), validation=held_out, **options)
    on_validation = lambda out: float(loss_fn(out.params, held_out[0]))  # noqa: E731
    assert len(evaluated) > module.VALIDATION_CHECKS  # the checkpoints, then the stored network
    assert chosen.report.compression_rate == last.report.compression_rate  # no weight zeroed after the choice
    assert on_validation(chosen) == pytest.approx(min(evaluated[:-1]), rel=1e-5)
    assert chosen.losses["validation"] == pytest.approx(on_validation(chosen), rel=1e-5)
    assert "validation" not in last.losses
    assert on_validation(chosen) <= on_validation(last) + 1e-6
    assert on_validation(last) == pytest.approx(evaluated[-2], rel=1e-5)  # the last checkpoint is a candidate


@pytest.mark.parametrize("validation, error, message", [
    ([], ValueError, "validation yielded no batch"),
    (5, TypeError, "validation must be an iterable"),
])
def test_bad_validation_batches_are_refused_before_training(validation, error, message):
    calls = []
    with pytest.raises(error, match=message):
        optreg.soft_share_compress(loss_fn, init(), batches(), num_examples=len(X), validation=validation,
                                   callback=lambda *args: calls.append(args))
    assert not calls


def test_a_loss_fn_that_is_not_a_scalar_is_refused_with_the_fix(trained):
    with_aux = lambda p, b: (loss_fn(p, b), {"logits": b[0]})  # noqa: E731
    with pytest.raises(TypeError, match=r"must return a scalar.*\(loss, aux\) pair pass lambda p, b: loss_fn\(p, b\)"):
        optreg.soft_share_compress(with_aux, trained, batches(8), num_examples=len(X))
    per_example = lambda p, b: loss_fn(p, b) * jnp.ones(b[0].shape[0])  # noqa: E731
    with pytest.raises(TypeError, match=r"got float32\[32\].*take .mean\(\)"):
        optreg.soft_share_compress(per_example, trained, batches(8), num_examples=len(X))


def test_a_sum_over_the_batch_is_refused_with_the_default_strength_and_accepted_with_a_scaled_one(trained):
    """A sum is a mean times the batch size: the default τ (for a mean) would be 32 times too weak."""
    summed = lambda p, b: loss_fn(p, b) * b[0].shape[0]  # noqa: E731
    with pytest.raises(ValueError, match=r"looks like a sum over the batch.*pass weight_decay scaled"):
        optreg.soft_share_compress(summed, trained, batches(8), num_examples=len(X))
    out = optreg.soft_share_compress(summed, trained, batches(8), num_examples=len(X), weight_decay=0.32 / len(X),
                                     steps=20, finetune_steps=20, min_rate=None, warn_loss_rise=None)
    assert np.isfinite(out.losses["final"])


def test_a_mean_loss_tied_to_one_batch_shape_is_not_mistaken_for_a_sum(trained):
    fixed = lambda p, b: loss_fn(p, (b[0].reshape(32, 12), b[1].reshape(32)))  # noqa: E731
    out = optreg.soft_share_compress(fixed, trained, batches(8), num_examples=len(X), steps=20, finetune_steps=20,
                                     min_rate=None, warn_loss_rise=None)
    assert np.isfinite(out.losses["final"])


def test_called_under_jit_it_says_to_call_it_outside(trained):
    with pytest.raises(TypeError, match=r"is a tracer.*call it outside jax.jit"):
        jax.jit(lambda p: optreg.soft_share_compress(loss_fn, p, batches(8), num_examples=len(X)).params)(trained)


def test_the_whole_dataset_given_as_batches_is_refused(trained):
    with pytest.raises(TypeError, match=r"batches is a tuple of 2 arrays of num_examples=512 rows.*whole dataset"):
        optreg.soft_share_compress(loss_fn, trained, (X, Y), num_examples=len(X))


def test_equinox_layer_state_is_refused_and_a_model_made_with_its_state_is_not():
    eqx = pytest.importorskip("equinox")

    class Net(eqx.Module):
        linear: eqx.nn.Linear
        norm: eqx.nn.BatchNorm

        def __init__(self, key):
            self.linear, self.norm = eqx.nn.Linear(12, 3, key=key), eqx.nn.BatchNorm(3, "batch", mode="batch")

    key = jax.random.key(0)
    model, state = eqx.nn.make_with_state(Net)(key)
    params, static = eqx.partition(model, eqx.is_array)

    def net_loss(p, b, s=state):
        net = eqx.nn.inference_mode(eqx.combine(p, static))
        logits = jax.vmap(lambda x: net.norm(net.linear(x), s)[0])(b[0])
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), b[1][:, None], axis=1))

    with pytest.raises(ValueError, match=r"'1' is layer state .*eqx.nn.make_with_state"):
        optreg.soft_share_compress(lambda ps, b: net_loss(ps[0], b, ps[1]), (params, state), batches(8),
                                   num_examples=len(X))
    unmade = eqx.partition(Net(key), eqx.is_array)[0]  # its StateIndex still holds the initial statistics
    with pytest.raises(ValueError, match=r"'norm/batch_counter' is layer state"):
        optreg.soft_share_compress(net_loss, unmade, batches(8), num_examples=len(X))
    out = optreg.soft_share_compress(net_loss, params, batches(8), num_examples=len(X), steps=20, finetune_steps=20,
                                     min_rate=None, warn_loss_rise=None)
    assert {layer.path for layer in out.report.layers} == {"linear/weight", "linear/bias", "norm/weight", "norm/bias"}


def test_unused_leaves_warn_and_frozen_ones_are_refused_and_kept_to_the_bit_when_masked_out(trained):
    """A leaf the loss gives no gradient is moved by the prior alone: unused, it is zeroed and counted free (a
    warning); used behind jax.lax.stop_gradient, zeroing it changes the network (refused, with the mask= fix)."""
    extra = {**trained, "extra": jnp.asarray(np.random.default_rng(1).normal(size=(12, 3)), jnp.float32)}
    uses_frozen = lambda p, b: loss_fn(p, b) + 1e-2 * jnp.mean(  # noqa: E731
        (b[0] @ jax.lax.stop_gradient(p["extra"])) ** 2)
    settings = {"num_examples": len(X), "steps": 20, "finetune_steps": 20, "min_rate": None, "warn_loss_rise": None}
    with pytest.warns(optreg.CompressionWarning, match=r"does not use the leaves \['extra'\].*out of params"):
        optreg.soft_share_compress(loss_fn, extra, batches(8), **settings)
    with pytest.raises(ValueError, match=r"uses the leaves \['extra'\] but gives them an all-zero gradient.*mask="):
        optreg.soft_share_compress(uses_frozen, extra, batches(8), **settings)
    mask = {**jax.tree.map(lambda _: True, trained), "step": False, "extra": False}
    with warnings.catch_warnings():
        warnings.simplefilter("error", optreg.CompressionWarning)
        out = optreg.soft_share_compress(uses_frozen, extra, batches(8), mask=mask, **settings)
    np.testing.assert_array_equal(np.asarray(out.params["extra"]), np.asarray(extra["extra"]))


def test_a_loss_flat_on_the_first_batch_is_neither_refused_nor_taken_for_unused_leaves():
    """A hinge loss with every margin met has a zero gradient everywhere and stays 0 when weights are scaled: the
    check cannot tell frozen from unused there and must say nothing (zeroing a leaf would change the loss)."""
    w = jnp.asarray(TEACHER * 1e4)  # the smallest score gap on X is 1.4e-3: every margin >= 13
    hinge = lambda p, b: jnp.mean(jax.nn.relu(1.0 - (b[0] @ p["w"])[jnp.arange(len(b[1])), b[1]]  # noqa: E731
                                              + jnp.max(jnp.where(jax.nn.one_hot(b[1], 3) > 0, -jnp.inf,
                                                                  b[0] @ p["w"]), axis=1)))
    separated = [(X[i:i + 32], Y[i:i + 32]) for i in range(0, 512, 32)]
    margins = [float(hinge({"w": w}, batch)) for batch in separated]
    first = separated[0]
    assert margins[0] == 0.0 and not np.any(np.asarray(jax.grad(hinge)({"w": w}, first)["w"]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optreg.soft_share_compress(hinge, {"w": w}, itertools.cycle(separated), num_examples=512, steps=5,
                                   finetune_steps=5, min_rate=None, warn_loss_rise=None)
    assert not [w for w in caught if "does not use" in str(w.message)]
