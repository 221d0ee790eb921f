"""Hyperparameters that may be numbers, arrays or optax schedules.

A schedule is evaluated at the transform's own step count: the k-th call to
``update`` (k = 0, 1, ...) uses ``schedule(k)``, exactly as optax's schedules
are used inside optax's optimizers.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optreg._checks import check_nonnegative
from optreg._tree import is_function

Hyperparameter = Union[float, jax.Array, Callable[[jax.Array], jax.Array]]


class CountState(NamedTuple):
    """State of a stateless-in-spirit transform: the number of updates so far.

    The count drives schedules; it is an int32 scalar so the state stays a
    plain, checkpointable array.
    """

    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as in optax's states


def init_count() -> CountState:
    return CountState(count=jnp.zeros([], jnp.int32))


def next_count(state: CountState) -> CountState:
    return CountState(count=optax.safe_int32_increment(state.count))


def check_hyperparameter(value: Any, name: str) -> None:
    """Checks a λ-like hyperparameter: >= 0, finite, scalar, or a scalar schedule."""
    check_nonnegative(value, name)
    if is_function(value):
        try:
            shape = jax.eval_shape(value, jax.ShapeDtypeStruct((), jnp.int32)).shape
        except Exception as error:  # noqa: BLE001 - report any failure of the user's schedule
            raise TypeError(
                f"{name} is callable, so it is taken as an optax schedule count -> value, "
                f"but calling it on an int32 step count failed: {error}"
            ) from error
        if shape != ():
            raise ValueError(f"{name}: the schedule must return a scalar, got shape {shape}.")
    elif not isinstance(value, jax.core.Tracer) and np.ndim(value) != 0:
        hint = " For one value per parameter use optreg.per_layer_decay." if name == "weight_decay" else ""
        raise ValueError(f"{name} must be a scalar (float, 0-d array or schedule), got shape {np.shape(value)}.{hint}")


def value_at(value: Hyperparameter, count: jax.Array) -> jax.Array:
    """The hyperparameter's value at step ``count`` (a schedule is called)."""
    if is_function(value):
        return jnp.asarray(value(count))
    return jnp.asarray(value)


def check_penalty_hyperparameter(value: Any, name: str) -> None:
    """A penalty's strength: what its transform accepts (a number, a 0-d array or a schedule)."""
    check_hyperparameter(value, name)


def penalty_value(value: Hyperparameter, count: Any) -> jax.Array:
    """A penalty's strength at ``count``: a schedule is evaluated there, as the transform's k-th update does."""
    if isinstance(count, bool) or not (isinstance(count, (int, np.integer)) or hasattr(count, "dtype")):
        raise TypeError(f"count must be an int step count (the transform's update count), got {count!r}.")
    return value_at(value, jnp.asarray(count, jnp.int32))
