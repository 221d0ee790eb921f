"""Every optreg transform (from the one registry) inside optax's wrappers and combinators.

Each test compares the wrapped chain with what the wrapper promises, computed
from the unwrapped chain: optax's own semantics are the reference.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optreg._registry import TRANSFORMS, Entry, in_chain

ENTRIES = {entry.name: entry for entry in TRANSFORMS}


def params_and_grads(seed: int = 0) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)

    def draw(*shape: int) -> jax.Array:
        return jnp.asarray(rng.uniform(0.2, 1.5, shape) * rng.choice([-1.0, 1.0], shape), jnp.float32)

    params = {"Dense_0": {"kernel": draw(6, 5), "bias": draw(5)}, "Dense_1": {"kernel": draw(5, 3), "bias": draw(3)}}
    grads = {"Dense_0": {"kernel": draw(6, 5), "bias": draw(5)}, "Dense_1": {"kernel": draw(5, 3), "bias": draw(3)}}
    return params, grads


def run(tx: optax.GradientTransformation, params: dict, grads_list: list[dict]) -> tuple[dict, object]:
    state = tx.init(params)
    for grads in grads_list:
        updates, state = jax.jit(tx.update)(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


names = pytest.mark.parametrize("name", sorted(ENTRIES))


@names
def test_multi_steps_applies_the_chain_to_the_mean_gradient(name: str) -> None:
    entry = ENTRIES[name]
    params, g1 = params_and_grads(0)
    _, g2 = params_and_grads(1)
    wrapped, _ = run(optax.MultiSteps(in_chain(entry, params), every_k_schedule=2), params, [g1, g2])
    mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
    expected, _ = run(in_chain(entry, params), params, [mean])
    chex.assert_trees_all_close(wrapped, expected, rtol=1e-5, atol=1e-6)


@names
def test_inject_hyperparams_gives_the_same_updates(name: str) -> None:
    entry = ENTRIES[name]
    params, grads = params_and_grads(0)
    injected = optax.inject_hyperparams(entry.factory, static_args=entry.static)(**entry.kwargs(params))
    got, state = run(injected, params, [grads, grads])
    expected, _ = run(entry.make(params), params, [grads, grads])
    chex.assert_trees_all_close(got, expected, rtol=1e-6, atol=1e-7)
    assert set(state.hyperparams) | set(entry.static) >= {k for k, v in entry.kwargs(params).items()
                                                          if isinstance(v, float)}


@names
def test_apply_if_finite_skips_a_nan_step_and_then_matches(name: str) -> None:
    entry = ENTRIES[name]
    params, grads = params_and_grads(0)
    bad = jax.tree.map(lambda g: g.at[0].set(jnp.nan), grads)
    tx = optax.apply_if_finite(in_chain(entry, params), max_consecutive_errors=3)
    after_bad, state = run(tx, params, [bad])
    chex.assert_trees_all_equal(after_bad, params)
    assert int(state.notfinite_count) == 1
    got, _ = run(tx, params, [bad, grads])
    expected, _ = run(in_chain(entry, params), params, [grads])
    chex.assert_trees_all_close(got, expected, rtol=1e-6, atol=1e-7)


def _kernels(tree: dict) -> dict:
    return {layer: {"kernel": True, "bias": False} for layer in tree}


@names
def test_optax_masked_leaves_others_untouched(name: str) -> None:
    entry = ENTRIES[name]
    params, grads = params_and_grads(0)
    tx = optax.masked(entry.make(params), _kernels(params))
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    for layer in params:
        chex.assert_trees_all_equal(updates[layer]["bias"], grads[layer]["bias"])
        assert np.isfinite(np.asarray(updates[layer]["kernel"])).all()
    if entry.elementwise:
        full, _ = entry.make(params).update(grads, entry.make(params).init(params), params)
        for layer in params:
            chex.assert_trees_all_close(updates[layer]["kernel"], full[layer]["kernel"], rtol=1e-6)


@names
def test_partition_routes_kernels_to_the_transform(name: str) -> None:
    entry = ENTRIES[name]
    params, grads = params_and_grads(0)
    labels = {layer: {"kernel": "regularized", "bias": "plain"} for layer in params}
    tx = optax.partition({"regularized": entry.make(params), "plain": optax.identity()}, labels)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    for layer in params:
        chex.assert_trees_all_equal(updates[layer]["bias"], grads[layer]["bias"])
    if entry.elementwise:
        full, _ = entry.make(params).update(grads, entry.make(params).init(params), params)
        for layer in params:
            chex.assert_trees_all_close(updates[layer]["kernel"], full[layer]["kernel"], rtol=1e-6)


@names
def test_clip_by_global_norm_before_equals_clipping_by_hand(name: str) -> None:
    entry = ENTRIES[name]
    params, grads = params_and_grads(0)
    got, _ = run(optax.chain(optax.clip_by_global_norm(0.5), in_chain(entry, params)), params, [grads])
    norm = float(optax.tree.norm(grads))
    clipped = jax.tree.map(lambda g: g * (0.5 / norm), grads)
    expected, _ = run(in_chain(entry, params), params, [clipped])
    chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-7)


@names
def test_lookahead_runs_and_syncs(name: str) -> None:
    entry = ENTRIES[name]
    params, grads = params_and_grads(0)
    tx = optax.lookahead(in_chain(entry, params), sync_period=2, slow_step_size=0.5)
    lookahead_params = optax.LookaheadParams.init_synced(params)
    state = tx.init(lookahead_params)
    for _ in range(2):
        updates, state = jax.jit(tx.update)(grads, state, lookahead_params)
        lookahead_params = optax.apply_updates(lookahead_params, updates)
    # after a sync the fast weights equal the slow ones
    chex.assert_trees_all_close(lookahead_params.fast, lookahead_params.slow, rtol=1e-6)
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(lookahead_params))


@names
def test_schedule_free_wraps_the_chain(name: str) -> None:
    entry = ENTRIES[name]
    params, grads = params_and_grads(0)
    if entry.placement == "last":
        base = optax.chain(optax.sgd(1.0), entry.make(params))  # schedule_free applies the learning rate itself
    else:
        base = optax.chain(entry.make(params), optax.sgd(1.0))
    tx = optax.contrib.schedule_free(base, learning_rate=1e-2)
    final, state = run(tx, params, [grads, grads, grads])
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(final))
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(params)))


def test_registry_is_complete() -> None:
    """Every public factory that returns a GradientTransformation has a registry entry."""
    import inspect

    import optreg

    factories = set()
    for public in optreg.__all__:
        value = getattr(optreg, public)
        if inspect.isfunction(value) and inspect.signature(value).return_annotation in (
            "optax.GradientTransformation", "PerLayerDecay", "optax.GradientTransformationExtraArgs",
        ):
            factories.add(public)
    assert factories <= set(ENTRIES), sorted(factories - set(ENTRIES))
    assert all(isinstance(entry, Entry) and entry.placement in ("before", "decoupled", "rate", "last")
               for entry in TRANSFORMS)
