"""Shared fixtures: small random nested pytrees like a Flax user's params."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest


def random_tree(seed: int = 0, dtype=jnp.float32):
    """A nested dict with a kernel, a bias, a list and a scalar, values away from 0."""
    rng = np.random.default_rng(seed)

    def draw(*shape):
        values = rng.uniform(0.1, 2.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)
        return jnp.asarray(values, dtype)

    return {
        "params": {
            "Dense_0": {"kernel": draw(5, 4), "bias": draw(4)},
            "Dense_1": {"kernel": draw(4, 3), "bias": draw(3)},
        },
        "extra": [draw(2, 2, 2), draw()],
    }


@pytest.fixture
def tree():
    return random_tree(0)


@pytest.fixture
def grads():
    return random_tree(1)


def tree_allclose(a, b, **kwargs):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), **kwargs)
