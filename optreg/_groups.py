"""Explicit weight sharing: user-given groups, each pulled toward its shared value.

With group labels g(i) and shared values μ_g, the hard-assignment case of
Nowlan & Hinton's (1992) soft weight sharing is the penalty

    Ω(w) = λ · Σ_g Σ_{i ∈ g} (w_i − μ_g)²,

e.g. four weights in two groups: λ[(w1 − μ1)² + (w2 − μ1)² + (w3 − μ2)² + (w4 − μ2)²].
When μ_g is not given it is the group's current mean, the value that minimises
Ω over μ_g; its gradient is then still 2λ(w_i − μ_g), because
Σ_{i ∈ g} (w_i − μ_g) = 0 (the terms through μ_g cancel). For learned, soft
assignments see :func:`optreg.soft_share_prior`.
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optreg import _hyper, _tree
from optreg._checks import renamed, require_params
from optreg._hyper import Hyperparameter


def _resolve_groups(groups: Any, params: Any) -> list[Optional[np.ndarray]]:
    """One int array (the leaf's shape) or None (no group) per leaf of ``params``.

    ``params`` may have empty subtrees where ``groups`` has a leaf (``optax.masked``
    and ``optax.partition`` hand the inner transform ``MaskedNode`` there).
    """
    labelled, structure = jax.tree_util.tree_flatten_with_path(groups, is_leaf=lambda x: x is None)
    label_def: Any = structure  # jax's PyTreeDef is untyped for mypy
    try:
        parts = label_def.flatten_up_to(params)
    except (ValueError, TypeError) as error:
        raise ValueError(
            "groups must have the params' structure, with an int array of each leaf's shape (labels 0..G−1, "
            f"−1 = no group) or None per leaf.\nparams paths: {_tree.leaf_paths(params)}\n{error}"
        ) from error
    out: list[Optional[np.ndarray]] = []
    for (label_path, label), part in zip(labelled, parts):
        flat = jax.tree_util.tree_flatten_with_path(part)[0]
        if not flat:
            continue  # a masked-out (empty) part of the params
        if label is None:
            out.extend([None] * len(flat))
            continue
        array = np.asarray(label)
        path = _tree.path_to_string(tuple(label_path) + tuple(flat[0][0]))
        if not np.issubdtype(array.dtype, np.integer):
            raise TypeError(f"groups at {path!r} must hold integer labels, got dtype {array.dtype}.")
        if len(flat) != 1 or array.shape != np.shape(flat[0][1]):
            raise ValueError(f"groups at {path!r} has shape {array.shape}, the parameter has {np.shape(flat[0][1])}.")
        out.append(array)
    _tree.check_no_running_statistics(params, [label is not None and bool(np.any(label >= 0)) for label in out])
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


def _label_dtype(num_groups: int) -> Any:
    """The smallest signed integer type holding −1..G − 1 (labels live in the state, one per weight)."""
    for dtype in (jnp.int8, jnp.int16):
        if num_groups <= jnp.iinfo(dtype).max:
            return dtype
    return jnp.int32


def _group_sizes(params: Any, labels: Sequence[Optional[np.ndarray]], num_groups: int) -> np.ndarray:
    """Floating-point weights per group (0..G − 1), counted from the static labels."""
    sizes = np.zeros([num_groups], np.float32)
    for leaf, label in zip(jax.tree.leaves(params), labels):
        if label is not None and _tree.is_floating(leaf):
            sizes += np.bincount(label[label >= 0].ravel(), minlength=num_groups)[:num_groups]
    return sizes


def _group_centres(weights: Sequence[jax.Array], labels: Sequence[jax.Array], sizes: np.ndarray) -> jax.Array:
    """Each group's mean weight. Indices keep the weights' shape: a sharded weight is summed shard by shard."""
    num_groups = sizes.shape[0]
    sums = jnp.zeros([num_groups + 1], jnp.float32)
    for w, label in zip(weights, labels):
        index = jnp.where(label < 0, num_groups, label).astype(jnp.int32)
        sums = sums.at[index].add(w.astype(jnp.float32), out_sharding=_tree.sharding_of(sums))
    return sums[:num_groups] / np.maximum(sizes, 1.0)


def _pulls(params: Any, labels: Sequence[Any], sizes: np.ndarray,
           shared_values: Optional[jax.Array]) -> list[Optional[jax.Array]]:
    """w_i − μ_g(i) for grouped weights (0 for label −1), None for ungrouped leaves.

    ``labels`` has one entry per leaf of ``params``: an int array of its shape, or None.
    """
    num_groups = sizes.shape[0]
    leaves = jax.tree.leaves(params)
    used = [(jnp.asarray(w), label) for w, label in zip(leaves, labels) if label is not None and _tree.is_floating(w)]
    if shared_values is None:
        centres = _group_centres([w for w, _ in used], [jnp.asarray(label) for _, label in used], sizes)
    else:
        centres = jnp.asarray(shared_values, jnp.float32)
    padded = jnp.concatenate([centres, jnp.zeros([1], jnp.float32)])
    out: list[Optional[jax.Array]] = []
    for w, label in zip(leaves, labels):
        if label is None or not _tree.is_floating(w):
            out.append(None)
            continue
        label = jnp.asarray(label)
        index = jnp.where(label < 0, num_groups, label).astype(jnp.int32)
        centre = padded.at[index].get(out_sharding=_tree.sharding_of(index))
        out.append(jnp.where(label >= 0, jnp.asarray(w).astype(jnp.float32) - centre, 0.0))
    return out


def _check_shared_values(shared_values: Any, num_groups: int) -> None:
    if shared_values is not None and np.shape(shared_values) != (num_groups,):
        raise ValueError(
            f"shared_values must have one value per group, shape ({num_groups},), got shape {np.shape(shared_values)}."
        )


def _check_order(weight_decay: Any, groups: Any, function: str) -> None:
    """The old order (params, groups, strength) put the labels where λ now goes: say so."""
    if not isinstance(weight_decay, (numbers.Real, np.generic, jax.Array)) and not _tree.is_function(weight_decay):
        raise TypeError(
            f"{function}: weight_decay must be a number, a 0-d array or a schedule, got {type(weight_decay).__name__}. "
            f"The order is {function}(params, weight_decay, groups, ...) (strengths before the groups), "
            "as in share_within_groups(weight_decay, groups)."
        )


@renamed(strength="weight_decay")
def group_share_penalty(
    params: Any, weight_decay: Hyperparameter, groups: Any, *, shared_values: Any = None, count: Any = 0
) -> jax.Array:
    """Ω = λ·Σ_g Σ_{i ∈ g} (w_i − μ_g)², μ_g = ``shared_values[g]`` or the group's mean.

    The loss-side form of :func:`share_within_groups`, with its signature and
    ``params`` in front.

    Args:
      params: any pytree of arrays.
      weight_decay: λ >= 0: float, 0-d array or schedule (evaluated at ``count``).
      groups: the params' structure with an int array of each leaf's shape
        (labels 0..G−1, −1 = not grouped) or None (leaf not grouped).
        Labels are global: label 3 in two leaves is one group.
      shared_values: optional (G,) array of fixed shared values μ_g.
      count: the step at which a schedule is evaluated.

    Returns:
      A float32 scalar.

    Example:
      >>> import jax.numpy as jnp, numpy as np, optreg
      >>> params = {"w": jnp.array([1.0, 3.0, 10.0, 14.0])}
      >>> float(optreg.group_share_penalty(params, 0.5, {"w": np.array([0, 0, 1, 1])}))
      5.0

    References:
      Nowlan & Hinton, "Simplifying neural networks by soft weight-sharing", Neural Computation 1992 (§1).
    """
    _check_order(weight_decay, groups, "group_share_penalty")
    _hyper.check_hyperparameter(weight_decay, "weight_decay")
    num_groups = _check_groups(groups)
    _check_shared_values(shared_values, num_groups)
    labels = _resolve_groups(groups, params)
    total = jnp.zeros([], jnp.float32)
    for pull in _pulls(params, labels, _group_sizes(params, labels, num_groups), shared_values):
        if pull is not None:
            total = total + jnp.sum(pull * pull)
    return _hyper.penalty_value(weight_decay, count).astype(jnp.float32) * total


class GroupState(NamedTuple):
    """State of :func:`share_within_groups`.

    ``labels`` is the params' tree of group labels (−1 = no group), in the
    smallest integer type that holds them. Carried in the state rather than
    baked into the compiled step, it is laid out like the params: under a
    sharded train step each device holds only its shard's labels.
    """

    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as in optax's states
    labels: Any


@renamed(strength="weight_decay")
def share_within_groups(
    weight_decay: Hyperparameter, groups: Any, *, shared_values: Any = None
) -> optax.GradientTransformation:
    """Adds 2λ(w_i − μ_g(i)), the gradient of :func:`group_share_penalty`, to the updates.

    Args:
      weight_decay: λ >= 0: float, 0-d array or optax schedule.
      groups: int labels per weight with the params' structure (see
        :func:`group_share_penalty`); they are static (checked at construction).
      shared_values: optional fixed (G,) shared values; default: each group's
        current mean (gradient identical to fixing μ_g at that mean).

    Returns:
      An ``optax.GradientTransformation`` whose state is a :class:`GroupState`
      (the step count and the labels, one small int per weight, shaped like the
      params, so ``optax.tree_utils.tree_map_params`` and FSDP rules shard them
      like the params); ``update`` requires ``params``.

    Example:
      Four weights in two groups, each pulled towards its group's mean:

      >>> import jax.numpy as jnp, numpy as np, optax, optreg
      >>> params = {"w": jnp.array([1.0, 3.0, 10.0, 14.0])}
      >>> tx = optreg.share_within_groups(0.5, {"w": np.array([0, 0, 1, 1])})
      >>> updates, _ = tx.update({"w": jnp.zeros(4)}, tx.init(params), params)
      >>> updates["w"].tolist()  # 2λ(w − μ_g)
      [-1.0, 1.0, -2.0, 2.0]

    References:
      Nowlan & Hinton, "Simplifying neural networks by soft weight-sharing", Neural Computation 1992.
    """
    _check_order(weight_decay, groups, "share_within_groups")
    _hyper.check_hyperparameter(weight_decay, "weight_decay")
    num_groups = _check_groups(groups)
    _check_shared_values(shared_values, num_groups)
    dtype = _label_dtype(num_groups)

    def init_fn(params: Any) -> GroupState:
        _tree.check_real(params)
        if not _tree.has_arrays(params):  # optax's tree_map_params placeholder: the labels mirror the params
            return GroupState(_hyper.init_count().count, params)
        labels = _resolve_groups(groups, params)
        treedef = jax.tree_util.tree_structure(params)
        state_labels = [
            jnp.full(jnp.shape(leaf), -1, dtype) if label is None else jnp.asarray(label, dtype)
            for leaf, label in zip(jax.tree.leaves(params), labels)
        ]
        return GroupState(_hyper.init_count().count, jax.tree_util.tree_unflatten(treedef, state_labels))

    def update_fn(updates: Any, state: GroupState, params: Optional[Any] = None) -> tuple[Any, GroupState]:
        params = require_params(params, "share_within_groups")
        static = _resolve_groups(groups, params)
        traced = _tree.flatten_like(jax.tree_util.tree_structure(params), state.labels, "the state's labels")
        labels = [None if label is None else leaf for label, leaf in zip(static, traced)]
        lam = _hyper.value_at(weight_decay, state.count)
        pulls = _pulls(params, labels, _group_sizes(params, static, num_groups), shared_values)

        def add(update: jax.Array, weight: jax.Array, value: jax.Array) -> jax.Array:
            return (update + (2.0 * lam * value).astype(update.dtype)).astype(update.dtype)

        next_state = GroupState(optax.safe_int32_increment(state.count), state.labels)
        return _tree.map_selected(add, pulls, updates, params), next_state

    return optax.GradientTransformation(init_fn, update_fn)
