"""Decay towards an anchor instead of zero: the penalty (λ/q)·Σ|w − a|^q and its transform.

With the pretrained weights as the anchor this is L2-SP (Li, Grandvalet &
Davoine 2018), the fine-tuning regularizer that keeps a network near its
starting point; with an anchor of ones on normalization scales it pulls the
scales towards 1 instead of 0. The anchor is data the optimizer carries in its
state (checkpointed and sharded like the params), never a constant compiled
into the train step.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optreg import _hyper, _tree
from optreg._checks import check_exponent, check_positive, require_params
from optreg._decay import DEFAULT_EPS, lq_gradient, safe_power_sum
from optreg._hyper import Hyperparameter
from optreg._numerics import compute_dtype
from optreg._tree import Mask

#: The anchor string meaning "the params passed to ``init``".
INIT = "init"


class AnchorState(NamedTuple):
    """State of :func:`decay_towards`: the update count and the anchor.

    ``anchor`` has the params' structure, shapes and dtypes (every leaf, also
    the masked-out ones, so that the state mirrors the params): it is saved
    with a checkpoint, and ``optax.tree_utils.tree_map_params`` or an FSDP
    rule shards it like the params.
    """

    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as in optax's states
    anchor: Any


#: The fix for an Equinox module passed whole (its activation functions are leaves too).
_EQUINOX_FIX = "; for an Equinox module pass its arrays only: eqx.filter(model, eqx.is_array)"


def _check_anchor(anchor: Any, *, allow_init: bool = True) -> None:
    """At construction: ``"init"`` or a non-empty pytree of real arrays."""
    fix = "pass 'init' (the params seen by init) or a pytree of arrays with the params' structure"
    if isinstance(anchor, str):
        if allow_init and anchor == INIT:
            return
        if anchor == INIT:
            raise ValueError("anchor='init' needs an optimizer state; the penalty needs the anchor's values: "
                             "pass the initial params themselves (a pytree of arrays).")
        raise ValueError(f"anchor must be 'init' or a pytree of arrays like the params, got the string {anchor!r}; "
                         f"{fix}.")
    if anchor is None or _tree.is_function(anchor):
        raise TypeError(f"anchor must be a pytree of arrays like the params, got {anchor!r}; {fix}. "
                        "An anchor is never called.")
    leaves = jax.tree.leaves(anchor)
    if not leaves:
        raise ValueError(f"anchor has no arrays ({anchor!r}); {fix}.")
    for path, leaf in jax.tree_util.tree_flatten_with_path(anchor)[0]:
        dtype = getattr(leaf, "dtype", None)
        if dtype is None:
            if not isinstance(leaf, (bool, int, float, np.number)):
                raise TypeError(f"anchor leaf {_tree.path_to_string(path)!r} must be an array or number, got {leaf!r}"
                                f"{_EQUINOX_FIX}.")
            continue
        if jnp.issubdtype(dtype, jnp.complexfloating):
            raise TypeError(f"anchor leaf {_tree.path_to_string(path)!r} has dtype {dtype}; anchors are real numbers.")


def _anchor_leaves(anchor: Any, params: Any) -> list[Any]:
    """The anchor's leaves in the params' order, each checked to have its param's shape."""
    treedef: Any = jax.tree_util.tree_structure(params)
    try:
        leaves = treedef.flatten_up_to(anchor)
    except (ValueError, TypeError) as error:
        raise ValueError(
            "anchor must have the same pytree structure as the params (one array per parameter; use mask= to "
            f"leave parameters out).\nparams paths: {_tree.leaf_paths(params)}\n{error}"
        ) from error
    for path, param, leaf in zip(_tree.leaf_paths(params), jax.tree.leaves(params), leaves, strict=True):
        if np.shape(leaf) != np.shape(param):
            raise ValueError(f"anchor at {path!r} has shape {np.shape(leaf)}, the parameter has {np.shape(param)}.")
    return leaves


def _pull(weight: jax.Array, anchor: jax.Array, weight_decay: jax.Array, q: float, eps: float) -> jax.Array:
    """λ·sign(w − a)·|w − a|^(q−1) in the compute dtype (w − a is clipped to the finite range: never inf·0)."""
    dtype = compute_dtype(weight.dtype)
    difference = weight.astype(dtype) - anchor.astype(dtype)
    largest = jnp.finfo(dtype).max
    return lq_gradient(jnp.clip(difference, -largest, largest), weight_decay, q, eps=eps)


def decay_towards_penalty(
    params: Any,
    anchor: Any,
    weight_decay: Hyperparameter,
    q: float = 2.0,
    *,
    mask: Mask = None,
    eps: float = DEFAULT_EPS,
    count: Any = 0,
) -> jax.Array:
    """Ω(w) = (λ/q)·Σ|w − a|^q over the (masked) floating leaves: the loss-side form of :func:`decay_towards`.

    Args:
      params: any pytree of arrays.
      anchor: a pytree of arrays with the params' structure and shapes (e.g.
        the pretrained weights). The string ``"init"`` has no meaning here:
        pass the initial params themselves.
      weight_decay: λ >= 0: a float, a 0-d array, or an optax schedule
        (evaluated at ``count``).
      q: exponent q > 0 (static).
      mask: like optax (pytree of bools, a prefix of one, or a function of the params).
      eps: as in :func:`decay_towards` (it shapes the transform's gradient for
        q < 1, not this value).
      count: the update count at which a schedule is evaluated:
        ``decay_towards_penalty(p, a, schedule, count=k)`` is what the
        transform's k-th update differentiates.

    Returns:
      A float32 (or float64) scalar.

    Example:
      >>> import jax.numpy as jnp, optreg
      >>> params, pretrained = {"w": jnp.array([3.0, 1.0])}, {"w": jnp.array([1.0, 1.0])}
      >>> print(round(float(optreg.decay_towards_penalty(params, pretrained, 0.5)), 3))
      1.0

    References:
      Li, Grandvalet & Davoine, "Explicit Inductive Bias for Transfer Learning
      with Convolutional Networks", ICML 2018 (the L2-SP penalty).
    """
    q = check_exponent(q)
    check_positive(eps, "eps")
    _check_anchor(anchor, allow_init=False)
    _hyper.check_penalty_hyperparameter(weight_decay, "weight_decay")
    _tree.check_real(params)
    selected = _tree.resolve_mask(mask, params)
    total = jnp.zeros([], jnp.float32)
    for weight, leaf, chosen in zip(jax.tree.leaves(params), _anchor_leaves(anchor, params), selected, strict=True):
        if chosen and _tree.is_floating(weight):
            weight = jnp.asarray(weight)
            dtype = compute_dtype(weight.dtype)
            total = total + safe_power_sum(weight.astype(dtype) - jnp.asarray(leaf).astype(dtype), q)
    return _hyper.penalty_value(weight_decay, count) / q * total


def decay_towards(
    anchor: Any,
    weight_decay: Hyperparameter,
    q: float = 2.0,
    *,
    mask: Mask = None,
    eps: float = DEFAULT_EPS,
) -> optax.GradientTransformation:
    """Adds λ·sign(w − a)·|w − a|^(q−1), the gradient of :func:`decay_towards_penalty`, to the updates.

    Weight decay that pulls each weight towards its anchor a rather than 0.
    With the pretrained weights as the anchor and q = 2 it is L2-SP (Li,
    Grandvalet & Davoine 2018) for fine-tuning; Li et al. leave the new
    layers (a new classifier head) to plain L2 towards 0, which is a second
    transform on the other leaves::

        backbone = lambda p: {"backbone": True, "head": False}
        tx = optax.chain(
            optreg.decay_towards(pretrained, α, mask=backbone),
            optreg.add_decayed_weights_q(β, mask=lambda p: {"backbone": False, "head": True}),
            optax.adam(lr))

    With an anchor of ones it keeps normalization scales near 1 (a Flax
    ``LayerNorm``'s ``scale``) instead of shrinking them to 0::

        ones = jax.tree.map(jnp.ones_like, params)
        is_scale = lambda p: jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "scale", p)
        optreg.decay_towards(ones, λ, mask=is_scale)

    Chained before the optimizer it is a loss term (coupled, as L2-SP is
    defined); between ``optax.scale_by_adam()`` and
    ``optax.scale_by_learning_rate(lr)`` it is decoupled, as AdamW.

    The anchor lives in the optimizer state (:class:`AnchorState`): it is
    checkpointed with it, sharded like the params (it has their structure and
    shapes), and a new anchor is a new state, not a new compiled step.

    Args:
      anchor: ``"init"`` (a copy of the params passed to ``init``) or a pytree
        of arrays with the params' structure and shapes, e.g. the pretrained
        weights. It is stored in the params' dtypes. A pytree is never called,
        even when it is callable (an Equinox module is).
      weight_decay: λ >= 0: a float, a 0-d array, or an optax schedule of the
        step count. Works in ``optax.inject_hyperparams(decay_towards, static_args=("q",))``.
      q: exponent q > 0 (static).
      mask: like optax: a pytree of bools with the params' structure (or a
        prefix), or a function ``params -> pytree``.
      eps: floor on |w − a| for q < 1 (see :func:`optreg.lq_gradient`).

    Returns:
      An ``optax.GradientTransformation`` whose state is an :class:`AnchorState`;
      ``update`` requires ``params``.

    Raises:
      ValueError, TypeError: at construction for an anchor string other than
        ``"init"``, an anchor that is None, a function or holds no arrays, a bad
        λ or q; at ``init`` for an anchor or mask that does not fit the params.

    Example:
      >>> import jax.numpy as jnp, optreg
      >>> params = {"w": jnp.array([3.0, -1.0])}
      >>> tx = optreg.decay_towards({"w": jnp.array([1.0, 1.0])}, 0.5)
      >>> out, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
      >>> [float(x) for x in out["w"]]
      [1.0, -1.0]

    References:
      Li, Grandvalet & Davoine, "Explicit Inductive Bias for Transfer Learning
      with Convolutional Networks", ICML 2018.
    """
    _check_anchor(anchor)
    from_init = isinstance(anchor, str)
    q = check_exponent(q)
    check_positive(eps, "eps")
    _hyper.check_hyperparameter(weight_decay, "weight_decay")

    def init_fn(params: Any) -> AnchorState:
        _tree.check_real(params)
        count = _hyper.init_count().count
        if not _tree.has_arrays(params):  # optax's tree_map_params placeholder: the anchor mirrors the params
            return AnchorState(count, params)
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
            if getattr(leaf, "dtype", None) is None and not isinstance(leaf, (bool, int, float, np.number)):
                raise TypeError(f"decay_towards: params leaf {_tree.path_to_string(path)!r} is not an array "
                                f"({leaf!r}), and the anchor copies every leaf{_EQUINOX_FIX}.")
        _tree.resolve_mask(mask, params)
        leaves = jax.tree.leaves(params) if from_init else _anchor_leaves(anchor, params)
        copies = [jnp.array(leaf, dtype=jnp.asarray(param).dtype, copy=True)  # a copy: params may be donated
                  for leaf, param in zip(leaves, jax.tree.leaves(params), strict=True)]
        return AnchorState(count, jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), copies))

    def update_fn(updates: Any, state: AnchorState, params: Optional[Any] = None) -> tuple[Any, AnchorState]:
        params = require_params(params, "decay_towards")
        lam = _hyper.value_at(weight_decay, state.count)
        selected = _tree.resolve_mask(mask, params)
        new_updates = _tree.map_selected(
            lambda u, w, a: (u + _pull(w, a, lam, q, eps).astype(u.dtype)).astype(u.dtype),
            selected, updates, params, state.anchor,
        )
        return new_updates, AnchorState(optax.safe_int32_increment(state.count), state.anchor)

    return optax.GradientTransformation(init_fn, update_fn)
