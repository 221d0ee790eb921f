"""optreg with Flax NNX: per-layer weight decay and proximal L1 inside ``nnx.Optimizer``.

Trains a small MLP with BatchNorm on scikit-learn's digits. The optimizer only
sees ``nnx.Param`` variables (``wrt=nnx.Param``), so BatchNorm's running
statistics are never regularised; ``optreg.decay_mask`` also keeps biases and
the norm's scale out of the L1 prox.

    python examples/nnx_training.py --epochs 10
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optreg
from optreg.demo.data import load_digits_split


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.linear1 = nnx.Linear(64, 300, rngs=rngs)
        self.norm = nnx.BatchNorm(300, rngs=rngs)
        self.linear2 = nnx.Linear(300, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear2(nnx.relu(self.norm(self.linear1(x))))


def make_optimizer(learning_rate: float = 1e-3) -> optax.GradientTransformation:
    return optax.chain(
        optreg.per_layer_decay({"linear1/kernel": 1e-3, "linear2/kernel": 1e-4}),  # coupled, one λ per layer
        optax.adam(learning_rate),
        optreg.proximal_lq(learning_rate, 3e-1, q=1, mask=optreg.decay_mask),  # exact zeros
    )


@nnx.jit
def train_step(model: MLP, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
    def loss_fn(model: MLP) -> jax.Array:
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def accuracy(model: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(model(x), -1) == y)


def main(epochs: int = 10, batch_size: int = 64, seed: int = 0) -> float:
    data = load_digits_split(seed)
    model = MLP(nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, make_optimizer(), wrt=nnx.Param)
    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(len(data.x_train))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            index = order[start : start + batch_size]
            loss = train_step(model, optimizer, jnp.asarray(data.x_train[index]), jnp.asarray(data.y_train[index]))
        model.eval()
        test_accuracy = float(accuracy(model, jnp.asarray(data.x_test), jnp.asarray(data.y_test)))
        kernels = nnx.state(model, nnx.Param)
        zeros = sum(int(jnp.sum(kernels[name]["kernel"][...] == 0)) for name in ("linear1", "linear2"))
        print(f"epoch {epoch + 1:>3}  loss {float(loss):.4f}  test accuracy {test_accuracy:.2%}  "
              f"zero kernel weights {zeros}")
    return test_accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    main(parser.parse_args().epochs)
