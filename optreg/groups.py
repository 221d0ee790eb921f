"""Explicit weight sharing: user-given groups, each pulled toward its shared value (seed 002's example).

With group labels g(i) and shared values μ_g, seed 002's penalty is

    Ω(w) = λ · Σ_g Σ_{i ∈ g} (w_i − μ_g)²,

e.g. four weights in two groups: λ[(w1 − μ1)² + (w2 − μ1)² + (w3 − μ2)² + (w4 − μ2)²].
When μ_g is not given it is the group's current mean, the value that minimises
Ω over μ_g; its gradient is then still 2λ(w_i − μ_g), because
Σ_{i ∈ g} (w_i − μ_g) = 0 (the terms through μ_g cancel). For learned, soft
assignments see :func:`optreg.soft_share_prior`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optreg import _hyper, _tree
from optreg._checks import require_params
from optreg._hyper import CountState, Hyperparameter


def _resolve_groups(groups: Any, params: Any) -> list[Optional[np.ndarray]]:
    """One int array (the leaf's shape) or None (no group) per leaf of ``params``."""
    treedef: Any = jax.tree_util.tree_structure(params)
    try:
        labels = treedef.flatten_up_to(groups)
    except (ValueError, TypeError) as error:
        raise ValueError(
            "groups must have the params' structure, with an int array of each leaf's shape (labels 0..G−1, "
            f"−1 = no group) or None per leaf.\nparams paths: {_tree.leaf_paths(params)}\n{error}"
        ) from error
    out: list[Optional[np.ndarray]] = []
    for path, leaf, label in zip(_tree.leaf_paths(params), jax.tree.leaves(params), labels):
        if label is None:
            out.append(None)
            continue
        array = np.asarray(label)
        if not np.issubdtype(array.dtype, np.integer):
            raise TypeError(f"groups at {path!r} must hold integer labels, got dtype {array.dtype}.")
        if array.shape != np.shape(leaf):
            raise ValueError(f"groups at {path!r} has shape {array.shape}, the parameter has {np.shape(leaf)}.")
        out.append(array)
    return out


def _check_groups(groups: Any) -> int:
    """The number of groups G (max label + 1); labels must be concrete ints >= −1."""
    labels = [np.asarray(leaf) for leaf in jax.tree.leaves(groups)]
    if not labels:
        raise ValueError("groups is empty: give an int label array per parameter (−1 = no group).")
    for array in labels:
        if not np.issubdtype(array.dtype, np.integer):
            raise TypeError(f"groups must hold integer labels, got dtype {array.dtype}.")
        if array.size and array.min() < -1:
            raise ValueError(f"group labels must be >= −1 (−1 = no group), got {int(array.min())}.")
    return int(max((array.max() if array.size else -1) for array in labels)) + 1


def _group_centres(weights: Sequence[jax.Array], labels: Sequence[np.ndarray], num_groups: int,
                   shared_values: Optional[jax.Array]) -> jax.Array:
    if shared_values is not None:
        return jnp.asarray(shared_values, jnp.float32)
    sums = jnp.zeros([num_groups + 1], jnp.float32)
    counts = jnp.zeros([num_groups + 1], jnp.float32)
    for w, label in zip(weights, labels):
        index = jnp.asarray(np.where(label < 0, num_groups, label).ravel())
        sums = sums.at[index].add(w.astype(jnp.float32).ravel())
        counts = counts.at[index].add(1.0)
    return (sums / jnp.maximum(counts, 1.0))[:num_groups]


def _pulls(params: Any, groups: Any, num_groups: int, shared_values: Optional[jax.Array]) -> list[Optional[jax.Array]]:
    """w_i − μ_g(i) for grouped weights (0 for label −1), None for ungrouped leaves."""
    labels = _resolve_groups(groups, params)
    leaves = jax.tree.leaves(params)
    used = [(jnp.asarray(w), label) for w, label in zip(leaves, labels) if label is not None and _tree.is_floating(w)]
    centres = _group_centres([w for w, _ in used], [label for _, label in used], num_groups, shared_values)
    padded = jnp.concatenate([centres, jnp.zeros([1], jnp.float32)])
    out: list[Optional[jax.Array]] = []
    for w, label in zip(leaves, labels):
        if label is None or not _tree.is_floating(w):
            out.append(None)
            continue
        index = np.where(label < 0, num_groups, label)
        distance = jnp.asarray(w).astype(jnp.float32) - padded[index]
        out.append(jnp.where(jnp.asarray(label >= 0), distance, 0.0))
    return out


def _check_shared_values(shared_values: Any, num_groups: int) -> None:
    if shared_values is not None and np.shape(shared_values) != (num_groups,):
        raise ValueError(
            f"shared_values must have one value per group, shape ({num_groups},), got shape {np.shape(shared_values)}."
        )


def group_share_penalty(params: Any, groups: Any, strength: Any = 1.0, shared_values: Any = None) -> jax.Array:
    """Ω = λ·Σ_g Σ_{i ∈ g} (w_i − μ_g)², μ_g = ``shared_values[g]`` or the group's mean.

    Args:
      params: any pytree of arrays.
      groups: the params' structure with an int array of each leaf's shape
        (labels 0..G−1, −1 = not grouped) or None (leaf not grouped).
        Labels are global: label 3 in two leaves is one group.
      strength: λ >= 0.
      shared_values: optional (G,) array of fixed shared values μ_g.

    References:
      Nowlan & Hinton, "Simplifying neural networks by soft weight-sharing", Neural Computation 1992 (§1).
    """
    num_groups = _check_groups(groups)
    _check_shared_values(shared_values, num_groups)
    total = jnp.zeros([], jnp.float32)
    for pull in _pulls(params, groups, num_groups, shared_values):
        if pull is not None:
            total = total + jnp.sum(pull * pull)
    return jnp.asarray(strength, jnp.float32) * total


def share_within_groups(
    strength: Hyperparameter, groups: Any, shared_values: Any = None
) -> optax.GradientTransformation:
    """Adds 2λ(w_i − μ_g(i)), the gradient of :func:`group_share_penalty`, to the updates.

    Seed 002's example, four weights in two groups::

        tx = optax.chain(optreg.share_within_groups(0.1, {"w": np.array([0, 0, 1, 1])}), optax.sgd(lr))

    Args:
      strength: λ >= 0: float, 0-d array or optax schedule.
      groups: int labels per weight with the params' structure (see
        :func:`group_share_penalty`); they are static (checked at construction).
      shared_values: optional fixed (G,) shared values; default: each group's
        current mean (gradient identical to fixing μ_g at that mean).

    Returns:
      An ``optax.GradientTransformation`` with a ``CountState``; ``update`` requires ``params``.

    References:
      Nowlan & Hinton, "Simplifying neural networks by soft weight-sharing", Neural Computation 1992.
    """
    _hyper.check_hyperparameter(strength, "strength")
    num_groups = _check_groups(groups)
    _check_shared_values(shared_values, num_groups)

    def init_fn(params: Any) -> CountState:
        _tree.check_real(params)
        if _tree.has_arrays(params):  # not optax's tree_map_params placeholder; checked again in update
            _resolve_groups(groups, params)
        return _hyper.init_count()

    def update_fn(updates: Any, state: CountState, params: Optional[Any] = None) -> tuple[Any, CountState]:
        params = require_params(params, "share_within_groups")
        lam = _hyper.value_at(strength, state.count)
        pulls = _pulls(params, groups, num_groups, shared_values)
        leaves, treedef = jax.tree_util.tree_flatten(updates)
        out = [
            u if pull is None else (u + (2.0 * lam * pull).astype(u.dtype)).astype(u.dtype)
            for u, pull in zip(leaves, pulls)
        ]
        return jax.tree_util.tree_unflatten(treedef, out), _hyper.next_count(state)

    return optax.GradientTransformation(init_fn, update_fn)
