"""The API rules (docs/api-rules.md) checked by machine, and the Equinox/optax seams they protect."""

from __future__ import annotations

import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optreg

eqx = pytest.importorskip("equinox")

#: transform -> its loss-side penalty (the penalty has the transform's signature with params in front).
PENALTY_OF = {
    "add_decayed_weights_q": "lq_penalty",
    "add_elastic_net": "elastic_net_penalty",
    "per_layer_decay": "per_layer_penalty",
    "share_within_groups": "group_share_penalty",
    "decay_towards": "decay_towards_penalty",
    "add_orthogonal_decay": "orthogonal_penalty",
    "add_spectral_decay": "spectral_penalty",
}
#: Options of a transform that its penalty has no use for: the floor on |w|^(q−1), and the power
#: iteration's settings (the penalty computes σ_max exactly).
TRANSFORM_ONLY = {"eps", "num_iterations", "seed"}


def public_factories() -> list[str]:
    from optreg._registry import TRANSFORMS

    return [entry.name for entry in TRANSFORMS]


@pytest.mark.parametrize("name", public_factories())
def test_options_are_keyword_only_and_mask_defaults_to_none(name: str) -> None:
    signature = inspect.signature(getattr(optreg, name))
    for parameter in signature.parameters.values():
        if parameter.name in ("mask", "eps", "axis", "per_leaf"):
            assert parameter.kind is inspect.Parameter.KEYWORD_ONLY, (name, parameter.name)
        if parameter.name == "mask":
            assert parameter.default is None, name


@pytest.mark.parametrize("transform,penalty", sorted(PENALTY_OF.items()))
def test_penalty_mirrors_its_transform(transform: str, penalty: str) -> None:
    tx_parameters = list(inspect.signature(getattr(optreg, transform)).parameters.values())
    penalty_parameters = list(inspect.signature(getattr(optreg, penalty)).parameters.values())
    assert penalty_parameters[0].name == "params"
    rest = {p.name: p for p in penalty_parameters[1:]}
    assert "count" in rest and rest["count"].kind is inspect.Parameter.KEYWORD_ONLY
    positional = [p.name for p in tx_parameters if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    assert [p.name for p in penalty_parameters[1:1 + len(positional)]] == positional
    for parameter in tx_parameters:
        if parameter.name in TRANSFORM_ONLY:
            continue
        assert parameter.name in rest, (penalty, parameter.name)
        assert rest[parameter.name].kind == parameter.kind, (penalty, parameter.name)
        assert rest[parameter.name].default == parameter.default, (penalty, parameter.name)


EXACT_PENALTIES = sorted((t, p) for t, p in PENALTY_OF.items() if t != "add_spectral_decay")  # spectral: power
# iteration, one step per update, converges to the penalty's gradient (tests/test_spectral.py)


@pytest.mark.parametrize("transform,penalty", EXACT_PENALTIES)
def test_penalty_evaluates_a_schedule_at_count_like_the_transform(transform: str, penalty: str) -> None:
    params = {"kernel": jnp.asarray([[1.0, -2.0], [0.5, 3.0]])}
    schedule = optax.linear_schedule(0.0, 1.0, 4)
    arguments = {
        "add_decayed_weights_q": ((schedule,), {}),
        "add_elastic_net": ((schedule, schedule), {}),
        "per_layer_decay": (({"kernel": schedule},), {}),
        "share_within_groups": ((schedule, {"kernel": np.array([[0, 1], [0, 1]])}), {}),
        "decay_towards": (({"kernel": jnp.asarray([[0.5, 0.5], [-1.0, 2.0]])}, schedule), {}),
        "add_orthogonal_decay": ((schedule,), {}),
    }[transform]
    tx = getattr(optreg, transform)(*arguments[0], **arguments[1])
    state = tx.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    for step in range(3):
        updates, state = tx.update(zeros, state, params)
        expected = jax.grad(lambda p: getattr(optreg, penalty)(p, *arguments[0], count=step))(params)
        chex.assert_trees_all_close(updates, expected, rtol=1e-6, atol=1e-7)


def test_old_keywords_and_orders_raise_naming_the_new_spelling() -> None:
    with pytest.raises(TypeError, match="'strength' is now called 'weight_decay'"):
        optreg.share_within_groups(strength=0.1, groups={"w": np.array([0, 1])})
    with pytest.raises(TypeError, match=r"group_share_penalty\(params, weight_decay, groups"):
        optreg.group_share_penalty({"w": jnp.ones(2)}, {"w": np.array([0, 1])}, 0.1)


# ----------------------------------------------------------------------------- Equinox


def equinox_model() -> object:
    return eqx.nn.MLP(3, 2, 8, 2, key=jax.random.key(0))


def test_a_pytree_mask_is_never_called_even_if_callable() -> None:
    model = equinox_model()
    params = eqx.filter(model, eqx.is_inexact_array)
    mask = jax.tree.map(lambda a: a.ndim == 2, params)
    assert callable(mask)  # an Equinox module: callable, but a pytree
    tx = optreg.add_decayed_weights_q(0.5, mask=mask)
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    for u, w in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
        np.testing.assert_allclose(u, 0.5 * w if w.ndim == 2 else 0.0, rtol=1e-6)


def test_a_function_mask_is_called_on_equinox_params() -> None:
    params = eqx.filter(equinox_model(), eqx.is_inexact_array)
    by_function = optreg.add_decayed_weights_q(0.5, mask=lambda p: jax.tree.map(lambda a: a.ndim == 2, p))
    by_tree = optreg.add_decayed_weights_q(0.5, mask=jax.tree.map(lambda a: a.ndim == 2, params))
    zeros = jax.tree.map(jnp.zeros_like, params)
    chex.assert_trees_all_close(by_function.update(zeros, by_function.init(params), params)[0],
                                by_tree.update(zeros, by_tree.init(params), params)[0])


def test_weight_decays_as_an_equinox_pytree_is_read_not_called() -> None:
    params = eqx.filter(equinox_model(), eqx.is_inexact_array)
    decays = jax.tree.map(lambda a: 0.1 if a.ndim == 2 else None, params)
    tx = optreg.per_layer_decay(decays)
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    for u, w in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
        np.testing.assert_allclose(u, 0.1 * w if w.ndim == 2 else 0.0, rtol=1e-6)


def test_equinox_training_loop_decays_kernels_only() -> None:
    x = jax.random.normal(jax.random.key(1), (32, 3))
    y = jnp.stack([x[:, 0] - x[:, 1], x[:, 2]], axis=1)

    def train(weight_decay: float) -> object:
        model = equinox_model()
        params = eqx.filter(model, eqx.is_inexact_array)
        mask = jax.tree.map(lambda a: a.ndim == 2, params)
        tx = optax.chain(optreg.add_decayed_weights_q(weight_decay, mask=mask), optax.adam(1e-2))
        state = tx.init(params)

        @eqx.filter_jit
        def step(model: object, state: object) -> tuple[object, object, jax.Array]:
            def loss_fn(m: object) -> jax.Array:
                return jnp.mean((jax.vmap(m)(x) - y) ** 2)

            loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
            updates, state = tx.update(grads, state, eqx.filter(model, eqx.is_inexact_array))
            return eqx.apply_updates(model, updates), state, loss

        losses = []
        for _ in range(60):
            model, state, loss = step(model, state)
            losses.append(float(loss))
        return model, losses

    plain, plain_losses = train(0.0)
    decayed, decayed_losses = train(1.0)
    assert decayed_losses[-1] < decayed_losses[0] and plain_losses[-1] < plain_losses[0]
    kernel_norm = [float(sum(jnp.sum(layer.weight ** 2) for layer in m.layers)) for m in (plain, decayed)]
    assert kernel_norm[1] < kernel_norm[0]


# ----------------------------------------------------------------------------- optax seams


def test_per_layer_decay_under_inject_hyperparams_with_the_documented_static_args() -> None:
    params = {"w": jnp.ones((5, 4))}
    tx = optax.inject_hyperparams(optreg.per_layer_decay, static_args=("q",))(weight_decays={"w": 1e-2})
    updates, _ = tx.update({"w": jnp.zeros((5, 4))}, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], 1e-2)
    with_mask = optax.inject_hyperparams(optreg.per_layer_decay, static_args=("q", "weight_decays", "mask"))(
        weight_decays={"w": 1e-2}, mask=optreg.decay_mask)
    updates, _ = with_mask.update({"w": jnp.zeros((5, 4))}, with_mask.init(params), params)
    np.testing.assert_allclose(updates["w"], 1e-2)


def test_a_mask_taken_for_a_schedule_names_the_real_cause() -> None:
    tx = optax.inject_hyperparams(optreg.per_layer_decay, static_args=("q",))(
        weight_decays={"w": 1e-2}, mask=optreg.decay_mask)
    with pytest.raises(TypeError, match="static_args"):
        tx.init({"w": jnp.ones((5, 4))})


def test_describe_finds_a_per_layer_decay_inside_a_chain_or_says_what_it_needs() -> None:
    params = {"Dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
    decay = optreg.per_layer_decay({"kernel": 1e-3})
    assert optreg.describe(optax.chain(decay, optax.adam(1e-3)), params) == optreg.describe(decay, params)
    assert "0.001" in optreg.describe(optax.chain(optax.clip(1.0), optax.chain(decay, optax.sgd(0.1))), params)
    with pytest.raises(ValueError, match="keep a reference"):
        optreg.describe(optax.adam(1e-3), params)


def test_none_update_leaves_pass_through_every_elementwise_transform() -> None:
    from optreg._registry import TRANSFORMS

    params = {"a": jnp.ones((3, 2)), "b": jnp.ones((2, 2))}
    for entry in TRANSFORMS:
        tx = entry.make(params)
        updates, _ = tx.update({"a": None, "b": jnp.zeros((2, 2))}, tx.init(params), params)
        assert updates["a"] is None, entry.name
        assert updates["b"].shape == (2, 2), entry.name
