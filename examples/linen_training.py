"""optreg with Flax linen: a ``TrainState`` whose ``tx`` carries optreg transforms.

Trains the demo's MLP (64-300-100-10) on scikit-learn's digits with decoupled
weight decay (AdamW placement, biases excluded by ``optreg.decay_mask``) and a
projection of each kernel onto an L2 ball (a max-norm constraint).

    python examples/linen_training.py --epochs 10
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

import optreg
from optreg.demo.data import load_digits_split
from optreg.demo.training import MLP


def make_optimizer(learning_rate: float = 1e-3) -> optax.GradientTransformation:
    return optax.chain(
        optax.scale_by_adam(),
        optreg.add_decayed_weights_q(1e-2, mask=optreg.decay_mask),  # decoupled: AdamW
        optax.scale_by_learning_rate(learning_rate),
        optreg.project_lq_ball(10.0, q=2, mask=optreg.decay_mask, per_leaf=True),  # ‖kernel‖₂ <= 10
    )


@jax.jit
def train_step(state: train_state.TrainState, x: jax.Array, y: jax.Array) -> tuple[train_state.TrainState, jax.Array]:
    def loss_fn(params):
        logits = state.apply_fn({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss


def main(epochs: int = 10, batch_size: int = 64, seed: int = 0) -> float:
    data = load_digits_split(seed)
    model = MLP()
    params = model.init(jax.random.key(seed), jnp.zeros((1, 64)))["params"]
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=make_optimizer())
    rng = np.random.default_rng(seed)
    predict = jax.jit(model.apply)
    for epoch in range(epochs):
        order = rng.permutation(len(data.x_train))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            index = order[start : start + batch_size]
            state, loss = train_step(state, jnp.asarray(data.x_train[index]), jnp.asarray(data.y_train[index]))
        logits = predict({"params": state.params}, jnp.asarray(data.x_test))
        test_accuracy = float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(data.y_test)))
        norms = [float(jnp.linalg.norm(layer["kernel"])) for layer in state.params.values()]
        print(f"epoch {epoch + 1:>3}  loss {float(loss):.4f}  test accuracy {test_accuracy:.2%}  "
              f"kernel norms {[round(n, 2) for n in norms]}")
    return test_accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    main(parser.parse_args().epochs)
