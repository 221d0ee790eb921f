"""The update of transforms that replace the step w + u by a function of several leaves at once.

Projections onto a whole-tree ball, the generic ``project`` and the
whole-tree group lasso see the selected leaves together, so they cannot go
through the leaf-by-leaf factory of :mod:`optreg._elementwise`. This module
gives them the same contract: masks resolved against the params, non-floating
and unselected leaves passed through, ``None`` updates passed through
(optax's semantics), work in the compute dtype, updates returned in their own
dtype.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from optreg import _tree
from optreg._checks import require_params
from optreg._numerics import compute_dtype
from optreg._tree import Mask


def _is_none(value: Any) -> bool:
    return value is None


def flatten_updates(updates: Any, params: Any, selected: list[bool]) -> tuple[list[Any], Any, list[Any], list[bool]]:
    """Updates (``None`` kept as a leaf), their structure, the matching params and one flag per update.

    A ``None`` update where the params hold an array (optax: nothing to update
    there) gets the flag False and passes through; ``selected`` has one flag
    per leaf of ``params`` (:func:`optreg._tree.resolve_mask`).
    """
    leaves, treedef = jax.tree_util.tree_flatten(updates, is_leaf=_is_none)
    weights = _tree.flatten_like(treedef, params)
    flags = iter(selected)
    chosen = []
    for leaf, weight in zip(leaves, weights, strict=True):
        consumes = len(jax.tree.leaves(weight))  # 0 for a None param, 1 for an array
        flag = all([next(flags) for _ in range(consumes)]) if consumes else False
        chosen.append(flag and leaf is not None and _tree.is_floating(leaf) and _tree.is_floating(weight))
    return leaves, treedef, weights, chosen


def replace_steps(
    name: str,
    updates: Any,
    params: Any,
    mask: Mask,
    new_params: Callable[[Any], Any],
    *,
    as_tree: bool = False,
) -> Any:
    """Updates u' with params + u' = ``new_params``(selected targets w + u) on the selected leaves.

    ``new_params`` gets the targets of all selected floating leaves at once, in
    their compute dtype (float32 for half precision): as a list (in leaf
    order), or with ``as_tree`` as a pytree of the updates' structure in which
    every other position is an ``optax.MaskedNode`` (an empty subtree, as
    ``optax.masked`` hides leaves). It returns the new params in the same
    form; the other updates pass through unchanged.
    """
    params = require_params(params, name)
    selected = _tree.resolve_mask(mask, params)
    leaves, treedef, weights, chosen = flatten_updates(updates, params, selected)
    indices = [i for i, flag in enumerate(chosen) if flag]
    originals = [jnp.asarray(leaves[i]) for i in indices]
    current = [jnp.asarray(weights[i]) for i in indices]
    current = [w.astype(compute_dtype(w.dtype)) for w in current]
    targets = [w + u.astype(w.dtype) for u, w in zip(originals, current)]
    if as_tree:
        hidden: list[Any] = [optax.MaskedNode() for _ in leaves]
        for i, target in zip(indices, targets):
            hidden[i] = target
        result_tree = new_params(jax.tree_util.tree_unflatten(treedef, hidden))
        try:
            flat = treedef.flatten_up_to(result_tree)
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"{name}: the function must return a pytree with the structure of its input. {error}"
            ) from error
        results = [flat[i] for i in indices]
    else:
        results = new_params(targets) if targets else []
    out = list(leaves)
    for i, u, w, z in zip(indices, originals, current, results, strict=True):
        z = jnp.asarray(z)
        if z.shape != w.shape:
            flat_paths = jax.tree_util.tree_flatten_with_path(updates, is_leaf=_is_none)[0]
            raise ValueError(
                f"{name}: the new value of {_tree.path_to_string(flat_paths[i][0])!r} has shape {z.shape}, the "
                f"parameter {w.shape}; the function must keep every leaf's shape."
            )
        out[i] = (z.astype(w.dtype) - w).astype(u.dtype)
    return jax.tree_util.tree_unflatten(treedef, out)
