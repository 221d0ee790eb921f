"""The one factory behind every elementwise optreg transform.

It owns what the transform contract asks of all of them: hyperparameters that
are numbers, arrays or schedules (checked at construction, evaluated at the
state's step count), optax-style masks (checked against the params at
``init``), real-only leaves, ``params`` required in ``update``, dtype kept.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import jax
import optax

from optreg import _hyper, _tree
from optreg._checks import require_params
from optreg._hyper import CountState, Hyperparameter
from optreg._tree import Mask

LeafUpdate = Callable[[jax.Array, jax.Array, Mapping[str, jax.Array]], jax.Array]


def elementwise_transform(
    name: str,
    hyperparameters: Mapping[str, Hyperparameter],
    leaf_update: LeafUpdate,
    mask: Mask = None,
) -> optax.GradientTransformation:
    """Builds a transform that maps each selected leaf's update ``u`` to ``leaf_update(u, w, values)``.

    Args:
      name: the public factory's name, used in error messages.
      hyperparameters: name -> value (float, 0-d array or schedule); each is
        checked here and evaluated at the step count in ``update``.
      leaf_update: ``(update, param, values) -> new update`` for one floating leaf.
      mask: optax-style mask; unselected and non-floating leaves pass through.
    """
    for key, value in hyperparameters.items():
        _hyper.check_hyperparameter(value, key)

    def init_fn(params: Any) -> CountState:
        _tree.check_real(params)
        _tree.resolve_mask(mask, params)
        return _hyper.init_count()

    def update_fn(updates: Any, state: CountState, params: Optional[Any] = None) -> tuple[Any, CountState]:
        params = require_params(params, name)
        values = {key: _hyper.value_at(value, state.count) for key, value in hyperparameters.items()}
        selected = _tree.resolve_mask(mask, params)
        new_updates = _tree.map_selected(
            lambda u, w: leaf_update(u, w, values).astype(u.dtype), selected, updates, params
        )
        return new_updates, _hyper.next_count(state)

    return optax.GradientTransformation(init_fn, update_fn)
