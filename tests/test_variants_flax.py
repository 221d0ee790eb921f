"""The decay variants inside real Flax training steps: NNX (``nnx.Optimizer``) and linen (``TrainState``)."""

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

LEARNING_RATE = 0.1


def variants():
    """name -> (optreg transform, where it goes: "before" the SGD step or "last" after it)."""
    return {
        "cautious": (optreg.add_cautious_weight_decay(0.1), "before"),
        "anchored": (optreg.decay_towards("init", 0.5), "before"),
        "independent": (optreg.independent_weight_decay(0.05), "last"),
        "orthogonal": (optreg.add_orthogonal_decay(0.1), "before"),
        "spectral": (optreg.add_spectral_decay(0.1, num_iterations=30), "before"),
    }


def chained(name):
    tx, place = variants()[name]
    return optax.chain(tx, optax.sgd(LEARNING_RATE)) if place == "before" else optax.chain(optax.sgd(LEARNING_RATE), tx)


def batch():
    rng = np.random.default_rng(0)
    return jnp.asarray(rng.normal(size=(16, 8)), jnp.float32), jnp.asarray(rng.integers(0, 3, 16))


def added_term(name, params, grads):
    """What the variant adds to plain SGD's step −η·g, computed here from its definition (float64 NumPy)."""
    w, g = np.asarray(params, np.float64), np.asarray(grads, np.float64)
    if name == "cautious":  # SGD: u = g; decay where g·w >= 0
        return -LEARNING_RATE * 0.1 * w * (g * w >= 0)
    if name == "anchored":  # the anchor is the params at init: no pull at the first step
        return np.zeros_like(w)
    if name == "independent":
        return -0.05 * w
    if w.ndim < 2:
        return np.zeros_like(w)
    matrix = w.reshape(-1, w.shape[-1])
    if name == "orthogonal":
        return -LEARNING_RATE * 0.1 * (matrix @ (matrix.T @ matrix - np.eye(matrix.shape[1]))).reshape(w.shape)
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    return -LEARNING_RATE * 0.1 * s[0] * np.outer(u[:, 0], vt[0]).reshape(w.shape)


class NnxNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.linear1 = nnx.Linear(8, 16, rngs=rngs)
        self.linear2 = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear2(nnx.relu(self.linear1(x)))


@nnx.jit
def nnx_step(model, optimizer, x, y):
    def loss_fn(m):
        return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

    grads = nnx.grad(loss_fn)(model)
    optimizer.update(model, grads)
    return grads


@pytest.mark.parametrize("name", list(variants()))
def test_nnx_optimizer_step_adds_the_variants_term(name):
    x, y = batch()
    model = NnxNet(nnx.Rngs(0))
    before = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    optimizer = nnx.Optimizer(model, chained(name), wrt=nnx.Param)
    grads = nnx_step(model, optimizer, x, y)
    after = nnx.state(model, nnx.Param)
    for w0, g, w1 in zip(jax.tree.leaves(before), jax.tree.leaves(grads), jax.tree.leaves(after)):
        expected = np.asarray(w0, np.float64) - LEARNING_RATE * np.asarray(g, np.float64) + added_term(name, w0, g)
        np.testing.assert_allclose(np.asarray(w1), expected, rtol=1e-4, atol=1e-5)


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(nn.relu(nn.Dense(16)(x)))


@pytest.mark.parametrize("name", list(variants()))
def test_linen_train_state_step_adds_the_variants_term(name):
    x, y = batch()
    model = LinenNet()
    params = model.init(jax.random.key(0), x)["params"]
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=chained(name))

    @jax.jit
    def step(state):
        def loss_fn(p):
            return optax.softmax_cross_entropy_with_integer_labels(state.apply_fn({"params": p}, x), y).mean()

        grads = jax.grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), grads

    new_state, grads = step(state)
    for w0, g, w1 in zip(*(jax.tree.leaves(t) for t in (params, grads, new_state.params))):
        expected = np.asarray(w0, np.float64) - LEARNING_RATE * np.asarray(g, np.float64) + added_term(name, w0, g)
        np.testing.assert_allclose(np.asarray(w1), expected, rtol=1e-4, atol=1e-5)
    again, _ = step(new_state)  # a second step runs on the carried state
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(again.params))
