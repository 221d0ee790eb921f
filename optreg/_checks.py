"""Argument checks shared by every factory: early, named, and telling the fix.

Only concrete Python / NumPy / JAX values are checked. A tracer (the value
``optax.inject_hyperparams`` passes inside ``jit``) or a schedule's output at
run time is never branched on.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Callable, TypeVar, cast

import jax
import numpy as np

F = TypeVar("F", bound=Callable[..., Any])


def is_concrete_number(value: Any) -> bool:
    """True for a Python/NumPy real scalar or a concrete (non-traced) 0-d array."""
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Real):
        return True
    if isinstance(value, jax.core.Tracer):
        return False
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):
        return np.ndim(value) == 0 and np.issubdtype(np.asarray(value).dtype, np.number)
    return False


def check_exponent(q: Any, *, name: str = "q", allow_zero: bool = False) -> float:
    """Returns ``q`` as a float after checking it is a finite, static real number > 0.

    Args:
      q: the exponent. It selects the code path at trace time, so it must be a
        Python number (use ``static_args=("q",)`` with ``optax.inject_hyperparams``).
      name: the argument's name, used in the error message.
      allow_zero: whether ``q = 0`` (the L0 "norm", proximal form only) is allowed.

    Raises:
      TypeError: if ``q`` is not a real Python/NumPy number.
      ValueError: if ``q`` is not finite or out of range.
    """
    if isinstance(q, jax.core.Tracer) or isinstance(q, jax.Array):
        raise TypeError(
            f"{name} must be a static Python number, got a JAX array {q!r}. "
            f"With optax.inject_hyperparams, pass static_args=({name!r},)."
        )
    if isinstance(q, bool) or not isinstance(q, (numbers.Real, np.generic)):
        raise TypeError(f"{name} must be a real number such as 2.0 or 1.5, got {q!r} of type {type(q).__name__}.")
    q = float(q)
    lowest = "q >= 0" if allow_zero else "q > 0"
    if not math.isfinite(q) or q < 0 or (q == 0 and not allow_zero):
        raise ValueError(f"{name} must be finite with {lowest.replace('q', name)}, got {name}={q!r}.")
    return q


def check_nonnegative(value: Any, name: str) -> None:
    """Raises ``ValueError`` if a concrete ``value`` is negative, NaN or infinite.

    Schedules (callables) and traced values pass: they are checked where they
    are evaluated, if at all.
    """
    if isinstance(value, jax.core.Tracer) or (
        callable(value) and jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(value))
    ):
        return
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number, array or schedule, got the bool {value!r}.")
    if isinstance(value, (numbers.Real, np.ndarray, np.generic, jax.Array)):
        array = np.asarray(value)
        if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.integer):
            raise TypeError(f"{name} must be real-valued, got dtype {array.dtype}.")
        if array.size and (not np.all(np.isfinite(array)) or np.any(array < 0)):
            raise ValueError(f"{name} must be finite and >= 0, got {name}={value!r}.")
        return
    raise TypeError(
        f"{name} must be a float, a 0-d array or an optax schedule (a callable of the step count), "
        f"got {value!r} of type {type(value).__name__}."
    )


def check_positive(value: Any, name: str) -> None:
    """Like :func:`check_nonnegative`, but also rejects zero."""
    check_nonnegative(value, name)
    if is_concrete_number(value) and float(value) == 0:
        raise ValueError(f"{name} must be > 0, got {name}={value!r}.")


def require_params(params: Any, transform: str) -> Any:
    """Returns ``params`` or raises a ``ValueError`` that tells how to pass them."""
    if params is None:
        raise ValueError(
            f"{transform}.update needs the current parameters: call tx.update(grads, state, params) "
            "(nnx.Optimizer and flax TrainState.apply_gradients do this for you)."
        )
    return params


def renamed(**old_to_new: str) -> Callable[[F], F]:
    """Decorator: a call that uses an old keyword raises a ``TypeError`` naming the new spelling.

    The signature seen by ``inspect.signature`` (and so by
    ``optax.inject_hyperparams``) is the function's own.
    """

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in old_to_new.items():
                if old in kwargs:
                    raise TypeError(
                        f"{function.__name__}: the argument {old!r} is now called {new!r} (one name per concept "
                        f"across optreg): write {function.__name__}(..., {new}=...)."
                    )
            return function(*args, **kwargs)

        return cast(F, wrapper)

    return decorate
