"""Flax models for the digits (an MLP 64-300-100-10 and a small CNN) and a jitted training loop."""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterator, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from optreg.demo.data import Split


class MLP(nn.Module):
    """ReLU multilayer perceptron; ``Dense_0 … Dense_{n-1}`` are its layers."""

    features: Sequence[int] = (300, 100, 10)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.features[:-1]:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.features[-1])(x)


class CNN(nn.Module):
    """A small CNN on the 8×8 digits: two 3×3 convolutions (16 and 32 channels, ReLU, 2×2 average
    pooling), a dense layer of 64 and the 10 outputs; ``Conv_0, Conv_1, Dense_0, Dense_1``."""

    features: Sequence[int] = (16, 32)
    dense: int = 64

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], 8, 8, 1)
        for width in self.features:
            x = nn.avg_pool(nn.relu(nn.Conv(width, (3, 3))(x)), (2, 2), (2, 2))
        x = nn.relu(nn.Dense(self.dense)(x.reshape(x.shape[0], -1)))
        return nn.Dense(10)(x)


def minibatches(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless minibatches, reshuffled every epoch with ``seed`` (the last partial batch dropped)."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(x))
        for start in range(0, len(x) - batch_size + 1, batch_size):
            index = order[start:start + batch_size]
            yield x[index], y[index]


class TrainResult(NamedTuple):
    """What :func:`train` returns."""

    params: Any
    opt_state: Any
    train_loss: float
    test_accuracy: float
    history: dict[str, list[float]]


def init_params(model: nn.Module, seed: int = 0, input_dim: int = 64) -> Any:
    """The model's ``params`` collection, deterministic in ``seed``."""
    return model.init(jax.random.key(seed), jnp.zeros((1, input_dim), jnp.float32))["params"]


def cross_entropy(model: nn.Module, params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    logits = model.apply({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@functools.lru_cache(maxsize=32)
def _jitted_apply(model: nn.Module) -> Callable[..., Any]:
    """One compiled ``model.apply`` per (hashable) module: ``jax.jit(model.apply)`` made afresh
    on every call would trace and compile again each time (~0.4 s per evaluation)."""
    return jax.jit(model.apply)


def accuracy(model: nn.Module, params: Any, x: Any, y: Any) -> float:
    logits = _jitted_apply(model)({"params": params}, jnp.asarray(x))
    return float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(y)))


def train(
    tx: optax.GradientTransformation,
    data: Split,
    *,
    model: Optional[nn.Module] = None,
    params: Any = None,
    epochs: int = 30,
    batch_size: int = 64,
    seed: int = 0,
    extra_loss: Optional[Callable[[Any], jax.Array]] = None,
    on_epoch: Optional[Callable[[int, dict[str, float]], None]] = None,
) -> TrainResult:
    """Trains ``model`` on ``data`` with ``tx`` (minibatch, reshuffled every epoch with ``seed``).

    Each epoch is one jitted ``lax.scan`` over the minibatches (the last partial
    batch is dropped). ``tx.update`` is always given ``params``.

    Args:
      tx: any optax transformation (e.g. ``optax.chain(optreg.…, optax.adam(1e-3))``).
      data: the split from :func:`optreg.demo.data.load_digits_split`.
      model: defaults to ``MLP()`` (64-300-100-10).
      params: start from these (e.g. a trained baseline); default: fresh init with ``seed``.
      epochs: passes over the training set.
      batch_size: examples per step.
      seed: seeds the init and the shuffling.
      extra_loss: optional ``params -> scalar`` added to the data loss (a loss-side penalty).
      on_epoch: called after every epoch with (epoch, {"train_loss": …, "test_accuracy": …}),
        e.g. to drive a progress bar.

    Returns:
      A :class:`TrainResult`; ``train_loss`` is the data loss (without penalties) on the
      whole training set at the end.
    """
    model = model or MLP()
    params = init_params(model, seed, data.x_train.shape[1]) if params is None else params
    opt_state = tx.init(params)
    x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    steps = x_train.shape[0] // batch_size
    if steps == 0:
        raise ValueError(f"batch_size={batch_size} exceeds the {x_train.shape[0]} training examples.")

    def loss_fn(p: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        loss = cross_entropy(model, p, x, y)
        return loss if extra_loss is None else loss + extra_loss(p)

    @jax.jit
    def run_epoch(params: Any, opt_state: Any, key: jax.Array) -> tuple[Any, Any]:
        order = jax.random.permutation(key, x_train.shape[0])[: steps * batch_size].reshape(steps, batch_size)

        def step(carry: tuple[Any, Any], index: jax.Array) -> tuple[tuple[Any, Any], None]:
            p, s = carry
            grads = jax.grad(loss_fn)(p, x_train[index], y_train[index])
            updates, s = tx.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), None

        (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), order)
        return params, opt_state

    evaluate_loss = jax.jit(lambda p: cross_entropy(model, p, x_train, y_train))
    history: dict[str, list[float]] = {"train_loss": [], "test_accuracy": []}
    key = jax.random.key(seed + 1)
    for epoch in range(epochs):
        key, subkey = jax.random.split(key)
        params, opt_state = run_epoch(params, opt_state, subkey)
        metrics = {
            "train_loss": float(evaluate_loss(params)),
            "test_accuracy": accuracy(model, params, data.x_test, data.y_test),
        }
        for name, value in metrics.items():
            history[name].append(value)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    final_loss = history["train_loss"][-1] if epochs else float(evaluate_loss(params))
    final_accuracy = history["test_accuracy"][-1] if epochs else accuracy(model, params, data.x_test, data.y_test)
    return TrainResult(params, opt_state, final_loss, final_accuracy, history)


def nonzero_fraction(params: Any) -> float:
    """Fraction of entries that are exactly nonzero, over all floating leaves."""
    leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(params)]
    total = sum(leaf.size for leaf in leaves)
    return float(sum(np.count_nonzero(leaf) for leaf in leaves) / max(total, 1))
