"""Parameter paths and masks over pytrees (Flax linen dicts, NNX states, anything).

A path is the '/'-joined keys a Flax user reads: ``params/Dense_0/kernel`` for
a linen variable dict, ``linear1/kernel`` for an NNX ``State`` (the Variable's
trailing ``.value`` is dropped).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, TypeGuard, Union

import jax
import jax.numpy as jnp
import numpy as np

Mask = Optional[Union[Any, Callable[[Any], Any]]]


def _key_name(key: Any) -> str:
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return key.name
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return str(key.key)
    return str(key)


def path_to_string(path: tuple) -> str:
    """``(DictKey('params'), DictKey('Dense_0'), DictKey('kernel'))`` -> ``'params/Dense_0/kernel'``."""
    names = [_key_name(key) for key in path]
    if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
        names = names[:-1]  # an NNX Variable's payload
    return "/".join(names)


def leaf_paths(tree: Any) -> list[str]:
    """The path string of every leaf, in ``jax.tree.leaves`` order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [path_to_string(path) for path, _ in flat]


def is_floating(leaf: Any) -> bool:
    """Whether a leaf is a real floating array (the only kind optreg regularizes)."""
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
        dtype = np.asarray(leaf).dtype
    return bool(jnp.issubdtype(dtype, jnp.floating))


def check_real(tree: Any, name: str = "params") -> None:
    """Raises ``TypeError`` for complex leaves; integer and bool leaves are left alone."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        dtype = getattr(leaf, "dtype", None)
        if dtype is not None and jnp.issubdtype(dtype, jnp.complexfloating):
            raise TypeError(
                f"{name} leaf {path_to_string(path)!r} is complex ({dtype}); optreg's penalties are "
                "defined for real weights. Split it into real and imaginary parts, or mask it out."
            )


def is_function(value: Any) -> TypeGuard[Callable[..., Any]]:
    """Whether ``value`` is to be *called*: callable and a leaf to JAX (not a registered pytree node).

    An Equinox module is callable but is a pytree: as a mask, a ``weight_decays``
    tree or an anchor it is data, never called. A plain function, a lambda, a
    ``functools.partial`` or an optax schedule is a leaf, so it is called.
    """
    return callable(value) and jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(value))


def broadcast_prefix(prefix: Any, tree: Any) -> list[Any]:
    """One value per leaf of ``tree``: ``prefix`` (a pytree with ``tree``'s structure, or a prefix
    of it) spread over the subtrees its leaves stand for.

    Raises:
      ValueError or TypeError: ``prefix`` is not a prefix of ``tree``'s structure (callers name
      their argument in the message).
    """
    treedef: Any = jax.tree_util.tree_structure(tree)  # jax's PyTreeDef is untyped for mypy
    spread = jax.tree.map(lambda value, sub: jax.tree.map(lambda _: value, sub), prefix, tree)
    return treedef.flatten_up_to(spread)


#: The path component under which Flax linen keeps BatchNorm's running statistics in a variables dict.
RUNNING_STATISTICS = "batch_stats"


def check_no_running_statistics(params: Any, acted_on: list[bool]) -> None:
    """A ``ValueError`` when a transform would act on a linen ``batch_stats`` leaf (running statistics are
    not parameters: decaying them moves BatchNorm's inference statistics, silently)."""
    for (path, leaf), acts in zip(jax.tree_util.tree_flatten_with_path(params)[0], acted_on, strict=True):
        where = path_to_string(path)
        if acts and is_floating(leaf) and RUNNING_STATISTICS in where.split("/"):
            raise ValueError(
                f"the params hold Flax's running statistics ({where!r}) and this transform would act on them. "
                "They are not parameters: give the optimizer variables['params'] only (close over batch_stats in "
                "the loss), or leave them out with mask=optreg.decay_mask.")


def resolve_mask(mask: Mask, params: Any, *, name: str = "mask", statistics: bool = False) -> list[bool]:
    """One bool per leaf of ``params``: where the transform applies.

    Like optax, ``mask`` is ``None`` (everything), a pytree with the same
    structure as ``params`` (or a prefix of it) with bool leaves, or a function
    ``params -> such a pytree``. A pytree is never called, even when it is
    callable (an Equinox module is): see :func:`is_function`. A mask that does
    not fit ``params`` is an error, never a silent no-op. Selected linen ``batch_stats`` leaves are
    an error too (see :func:`check_no_running_statistics`) unless ``statistics`` (the caller decides
    later which leaves it acts on, and checks them then).
    """
    flags = _mask_flags(mask, params, name)
    if not statistics:
        check_no_running_statistics(params, flags)
    return flags


def _mask_flags(mask: Mask, params: Any, name: str) -> list[bool]:
    treedef: Any = jax.tree_util.tree_structure(params)  # jax's PyTreeDef is untyped for mypy
    if mask is None:
        return [True] * treedef.num_leaves
    tree = mask(params) if is_function(mask) else mask
    try:
        flags = broadcast_prefix(tree, params)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"{name} does not match the parameters' structure: it must be a pytree of bools with the "
            f"same structure as the params (or a prefix of it), or a function returning one.\n"
            f"params paths: {leaf_paths(params)}\n{error}"
        ) from error
    result = []
    for path, flag in zip(leaf_paths(params), flags, strict=True):
        if isinstance(flag, jax.core.Tracer):
            raise TypeError(
                f"{name} at {path!r} is a traced value; a mask must be static Python bools. Under "
                f"optax.inject_hyperparams, list a mask in static_args=({name!r},)."
            )
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{name} at {path!r} must be a bool, got {flag!r}.")
        result.append(bool(flag))
    return result


def flatten_like(updates_treedef: Any, tree: Any, name: str = "params") -> list[Any]:
    """The leaves of ``tree`` in the order of ``updates_treedef``; an error naming ``name`` if it does not fit."""
    treedef: Any = updates_treedef  # jax's PyTreeDef is untyped for mypy
    try:
        return treedef.flatten_up_to(tree)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"{name} must have the same pytree structure as the updates (pass the params the gradients "
            f"were taken of). updates: {treedef}\n{error}"
        ) from error


def _is_none(value: Any) -> bool:
    return value is None


def flatten_updates(updates: Any, params: Any, per_leaf: Sequence[Any]) -> tuple[list[Any], Any, list[Any], list[Any]]:
    """Updates, their structure, the matching params, and ``per_leaf`` aligned to them, ``None`` updates as leaves.

    optax lets an update be ``None`` where the params hold an array (nothing to
    update there). ``per_leaf`` has one value per leaf of ``params`` (e.g.
    :func:`resolve_mask`'s flags, or one λ per leaf); it comes back aligned with
    the update leaves, with ``None`` where the update or the param is ``None``.
    """
    leaves, treedef = jax.tree_util.tree_flatten(updates, is_leaf=_is_none)
    weights = flatten_like(treedef, params)
    values = iter(per_leaf)
    aligned = []
    for leaf, weight in zip(leaves, weights, strict=True):
        taken = [next(values) for _ in range(len(jax.tree.leaves(weight)))]  # one per array param, none for None
        aligned.append(taken[0] if len(taken) == 1 and leaf is not None else None)
    return leaves, treedef, weights, aligned


def map_selected(function: Callable[..., Any], selected: Sequence[Any], updates: Any, *rest: Any) -> Any:
    """Applies ``function(update, *rest_leaves)`` on selected floating leaves; others (and ``None``
    updates) pass through. ``rest[0]`` must be the params ``selected`` was resolved against.

    ``selected`` holds one entry per leaf of the params: a bool, or any value
    (``None`` = not selected), which is then passed to ``function`` as a keyword
    ``value=`` (e.g. a per-leaf λ).
    """
    if not rest:
        leaves, treedef = jax.tree_util.tree_flatten(updates, is_leaf=_is_none)
        chosen = [None if leaf is None else flag for leaf, flag in zip(leaves, selected, strict=True)]
        rest_leaves: list[list[Any]] = []
    else:
        leaves, treedef, first, chosen = flatten_updates(updates, rest[0], selected)
        rest_leaves = [first] + [flatten_like(treedef, tree) for tree in rest[1:]]
    out = []
    for index, (leaf, flag) in enumerate(zip(leaves, chosen, strict=True)):
        others = [tree_leaves[index] for tree_leaves in rest_leaves]
        if flag is None or flag is False or not is_floating(leaf) or not all(is_floating(o) for o in others):
            out.append(leaf)
            continue
        # jnp.asarray: a Python-float leaf has no .dtype / .astype
        arguments = [jnp.asarray(leaf), *(jnp.asarray(o) for o in others)]
        out.append(function(*arguments) if isinstance(flag, (bool, np.bool_)) else function(*arguments, value=flag))
    return jax.tree_util.tree_unflatten(treedef, out)


def has_arrays(params: Any) -> bool:
    """False for the opaque placeholder ``optax.tree_utils.tree_map_params`` passes to ``init``
    when deriving optimizer-state shardings; checks that need real leaves are skipped then."""
    return any(hasattr(leaf, "shape") for leaf in jax.tree.leaves(params))


def sharding_of(x: jax.Array, trailing_axes: int = 0) -> Any:
    """``x``'s sharding as seen while tracing, with ``trailing_axes`` unsharded axes appended.

    Pass it as ``out_sharding`` to gathers and scatters (``.at[...].get/add``) so
    their result is laid out like their indices, shard by shard: without it an
    explicit mesh rejects them and an automatic one may gather the whole array.
    """
    sharding = jax.typeof(x).sharding
    return sharding.update(spec=jax.sharding.PartitionSpec(*sharding.spec, *([None] * trailing_axes)))
