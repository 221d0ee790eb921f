"""Group lasso: the penalty λ·Σ_g ‖w_g‖₂, its prox (block soft thresholding) and the proximal transform.

Structured sparsity: a group whose norm is at most learning_rate·λ becomes
exactly zero as a whole, so grouping the weights of a unit (or a filter)
prunes the unit. Groups are given by ``axis``, the axes reduced within one
group (numpy's ``axis``; see :mod:`optreg._grouping`):

* ``axis=None``: all the (selected) leaves together are one group, as
  jaxopt's ``prox_group_lasso`` takes the whole pytree;
* ``axis=0`` on a Dense kernel of shape (in, out): one group per output unit
  (its incoming weights); ``axis=1``: one group per input feature;
  ``axis=(0, 1, 2)`` on a conv kernel (h, w, in, out): one group per filter.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import optax

from optreg import _hyper, _tree
from optreg._checks import require_params
from optreg._elementwise import elementwise_transform
from optreg._grouping import Axis, check_axis, group_norm, group_sum, norm_pair, normalized_axes
from optreg._hyper import CountState, Hyperparameter
from optreg._joint import replace_steps
from optreg._numerics import compute_dtype
from optreg._strengths import check_scaling, check_strength_value, clip_negative, per_leaf
from optreg._tree import Mask


def _factor(leaves: list[jax.Array], s: jax.Array, axis: Axis) -> tuple[jax.Array, jax.Array]:
    """(max(0, 1 − s/‖x_g‖), ‖x_g‖) per group; the norm is exact wherever it exceeds s."""

    def finish(scale: jax.Array, root: jax.Array) -> tuple[jax.Array, jax.Array]:
        norm = scale * root  # inf where ‖x_g‖ overflows: then the factor is 1 up to rounding, as it should be
        outside = norm > s
        return jnp.where(outside, 1.0 - s / jnp.where(outside, norm, 1.0), 0.0), norm

    return norm_pair(leaves, axis, s, finish)  # finish runs once per group, inside the cond


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def group_shrink(leaves: list[jax.Array], s: jax.Array, axis: Axis) -> list[jax.Array]:
    """z_g = max(0, 1 − s/‖x_g‖₂)·x_g for each group, leaves in their compute dtype and s >= 0.

    Its JVP is that of the formula: on a kept group (‖x_g‖ > s), with
    x̂ = x/‖x_g‖, dz = f·dx + x̂·((s/‖x_g‖)·⟨x̂, dx⟩ − ds); a zeroed group has
    derivative 0.
    """
    factor, _ = _factor(leaves, s, axis)
    return [x * factor for x in leaves]


@group_shrink.defjvp
def _group_shrink_jvp(axis: Axis, primals: tuple[Any, Any], tangents: tuple[Any, Any]) -> tuple[Any, Any]:
    (leaves, s), (d_leaves, ds) = primals, tangents
    factor, norm = _factor(leaves, s, axis)
    kept = factor > 0
    safe = jnp.where(kept, norm, 1.0)
    units = [jnp.where(kept, x / safe, 0.0) for x in leaves]
    along = group_sum([u * d for u, d in zip(units, d_leaves)], axis)
    coefficient = (s / safe) * along - ds
    return [x * factor for x in leaves], [factor * d + u * coefficient for u, d in zip(units, d_leaves)]


#: :func:`group_shrink` compiled once per structure, axis and dtype (the operator is called eagerly too).
_group_shrink_jit = jax.jit(group_shrink, static_argnums=2)


def _floating(x: Any) -> tuple[list[Any], Any, list[int]]:
    leaves, treedef = jax.tree_util.tree_flatten(x)
    return leaves, treedef, [i for i, leaf in enumerate(leaves) if _tree.is_floating(leaf)]


def _in_compute(leaf: Any) -> jax.Array:
    leaf = jnp.asarray(leaf)
    return leaf.astype(compute_dtype(leaf.dtype))


def _group_shape(axis: Axis) -> Any:
    def shape(leaf: Any, where: str) -> tuple[int, ...]:
        axes = normalized_axes(axis, tuple(jnp.shape(leaf)), where)
        return tuple(1 if i in axes else n for i, n in enumerate(jnp.shape(leaf)))

    return shape


def prox_group_lasso(x: Any, scale: Any = 1.0, scaling: Any = 1.0, *, axis: Axis = None) -> Any:
    """Proximal operator of the group lasso scale·Σ_g ‖z_g‖₂ (block soft thresholding).

    Each group is shrunk as z_g = max(0, 1 − scale/‖x_g‖₂)·x_g; a group whose
    norm is at most ``scale`` becomes exactly zero (ties go to zero). The norm
    is computed without overflow or underflow for any float.

    Groups: with ``axis=None`` all floating leaves of ``x`` together form one
    group (as jaxopt's ``prox_group_lasso``; map it over leaves for one group
    per leaf). With ``axis`` (an int or a tuple, the axes reduced within one
    group, as numpy's) every slice of every leaf over those axes is a group:
    for a Flax ``Dense`` kernel of shape (in, out), ``axis=0`` is one group per
    output unit and ``axis=1`` one per input feature; for a conv kernel (h, w,
    in, out), ``axis=(0, 1, 2)`` is one group per filter.

    Derivatives in ``x`` and ``scale`` are those of the formula (0 on zeroed groups).

    Args:
      x: a floating array or a pytree of them (non-floating leaves pass
        through; half precision is computed in float32 and cast back).
      scale: >= 0. With ``axis=None`` one number; with ``axis`` one number or
        array for every leaf, or a pytree with ``x``'s structure (or a prefix),
        each value broadcasting against the leaf's per-group (keepdims) shape,
        e.g. one strength per unit.
      scaling: one number >= 0 multiplying ``scale``, as jaxopt's ``scaling`` (a step size:
        ``prox_group_lasso(x, l2reg, scaling)`` is jaxopt's call).
      axis: ``None``, an int or a tuple of ints (keyword-only).

    Returns:
      The same structure as ``x``, shapes and dtypes kept.

    Raises:
      ValueError, TypeError: for a bad ``axis``, one that does not fit a leaf,
        or a ``scale`` that does not fit (the message names the leaf and shapes).

    Example:
      >>> import jax.numpy as jnp, numpy as np
      >>> from optreg.prox import prox_group_lasso
      >>> kernel = jnp.array([[3.0, 0.1], [4.0, 0.2]])  # (in, out): two output units
      >>> np.asarray(prox_group_lasso(kernel, 1.0, axis=0), float).round(3).tolist()  # unit norms 5 and 0.22
      [[2.4, 0.0], [3.2, 0.0]]

    References:
      Yuan & Lin, "Model selection and estimation in regression with grouped variables", JRSS-B 2006.
      Parikh & Boyd, "Proximal Algorithms", 2014 (§6.5.4).
      Wen, Wu, Wang, Chen & Li, "Learning structured sparsity in deep neural networks", NeurIPS 2016.
    """
    axis = check_axis(axis)
    check_scaling(scaling, "scale")
    leaves, treedef, indices = _floating(x)
    if axis is None:
        if not jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(scale)):
            raise ValueError(
                "scale must be one number with axis=None: all leaves together are one group. For one group "
                "per slice pass axis; for one group per leaf map prox_group_lasso over the leaves."
            )
        check_strength_value(scale, "scale")
        if jnp.ndim(scale) != 0:
            raise ValueError(f"scale must be a scalar with axis=None (one group), got shape {jnp.shape(scale)}.")
        inputs = [_in_compute(leaves[i]) for i in indices]
        if inputs:
            s = clip_negative((jnp.asarray(scale) * scaling).astype(jnp.result_type(*inputs)))
            for i, z in zip(indices, _group_shrink_jit(inputs, s, None)):
                leaves[i] = z.astype(jnp.asarray(leaves[i]).dtype)
        return jax.tree_util.tree_unflatten(treedef, leaves)
    scales = per_leaf(scale, x, "scale", _group_shape(axis), "the per-group shape of x's leaf")
    for i in indices:
        leaf = jnp.asarray(leaves[i])
        compute = compute_dtype(leaf.dtype)
        s = clip_negative((jnp.asarray(scales[i]) * scaling).astype(compute))
        leaves[i] = _group_shrink_jit([leaf.astype(compute)], s, axis)[0].astype(leaf.dtype)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def group_lasso_penalty(
    params: Any,
    weight_decay: Hyperparameter,
    *,
    axis: Axis = None,
    mask: Mask = None,
    count: Any = 0,
) -> jax.Array:
    """The group lasso penalty Ω(w) = λ·Σ_g ‖w_g‖₂ over the (masked) floating leaves.

    The loss-side form of :func:`optreg.proximal_group_lasso`, with its
    signature and ``params`` in front; groups as there (``axis=None``: the
    selected leaves together are one group). Its gradient at w = 0 is 0 (the
    subgradient of smallest norm), never NaN.

    Args:
      params: any pytree of arrays.
      weight_decay: λ >= 0: a float, a 0-d array or an optax schedule (evaluated at ``count``).
      axis: the axes reduced within one group, ``None``, an int or a tuple.
      mask: optax-style mask; masked-out leaves contribute nothing.
      count: the step at which a schedule is evaluated.

    Returns:
      A scalar in the params' compute dtype.

    Example:
      >>> import jax.numpy as jnp, optreg
      >>> float(optreg.group_lasso_penalty({"w": jnp.array([[3.0, 0.0], [4.0, 1.0]])}, 0.5, axis=0))
      3.0

    References:
      Yuan & Lin, "Model selection and estimation in regression with grouped variables", JRSS-B 2006.
    """
    axis = check_axis(axis)
    _hyper.check_hyperparameter(weight_decay, "weight_decay")
    selected = _tree.resolve_mask(mask, params)
    chosen = [
        _in_compute(leaf) for leaf, flag in zip(jax.tree.leaves(params), selected) if flag and _tree.is_floating(leaf)
    ]
    strength = clip_negative(_hyper.value_at(weight_decay, jnp.asarray(count, jnp.int32)))
    if not chosen:
        return jnp.zeros([], jnp.float32)
    dtype = jnp.result_type(*chosen)
    groups = [chosen] if axis is None else [[leaf] for leaf in chosen]
    total = jnp.zeros([], dtype)
    for group in groups:
        if axis is not None:
            normalized_axes(axis, group[0].shape)
        total = total + jnp.sum(group_norm(group, axis))
    return strength.astype(dtype) * total


def proximal_group_lasso(
    learning_rate: Hyperparameter,
    weight_decay: Hyperparameter,
    *,
    axis: Axis = None,
    mask: Mask = None,
) -> optax.GradientTransformation:
    """Replaces the step w + u by prox_group_lasso(w + u, learning_rate·weight_decay, axis=axis).

    The proximal-gradient step for :func:`optreg.group_lasso_penalty`
    λ·Σ_g ‖w_g‖₂: a group whose norm after the step is at most
    learning_rate·λ becomes exactly zero, so ``axis=0`` on Dense kernels
    (shape (in, out)) prunes whole units and ``axis=(0, 1, 2)`` on conv kernels
    whole filters. Place it last in the chain, after the learning rate::

        optax.chain(optax.adam(lr), optreg.proximal_group_lasso(lr, 1e-3, axis=0, mask=optreg.decay_mask))

    ``learning_rate`` must be the step size the updates were scaled by (the
    same float or schedule as the optimizer's); see
    :func:`optreg.scale_by_learning_rate_and_prox` for the form that takes it once.

    Args:
      learning_rate: the step size u was scaled by: float, 0-d array or the
        optimizer's schedule (evaluated at this transform's count).
      weight_decay: λ >= 0: float, 0-d array or schedule. A value that turns
        negative at run time acts as 0.
      axis: the axes reduced within one group (static): ``None`` (the selected
        leaves together form one group), an int or a tuple of ints.
      mask: optax-style mask; unselected leaves get the plain update.

    Returns:
      An ``optax.GradientTransformation`` with a :class:`optreg.CountState`;
      ``update`` requires ``params``. ``None`` updates pass through.

    Raises:
      ValueError, TypeError: at construction for a bad ``axis`` or
        hyperparameter; at ``init`` for a mask or an ``axis`` that does not fit
        the params (the message names the leaf).

    Example:
      >>> import jax.numpy as jnp, optax, optreg
      >>> params = {"kernel": jnp.array([[3.0, 0.01], [4.0, -0.02]])}
      >>> tx = optax.chain(optax.sgd(0.1), optreg.proximal_group_lasso(0.1, 1.0, axis=0))
      >>> updates, _ = tx.update({"kernel": jnp.zeros((2, 2))}, tx.init(params), params)
      >>> optax.apply_updates(params, updates)["kernel"][:, 1].tolist()  # the second unit is pruned
      [0.0, 0.0]

    References:
      Yuan & Lin, "Model selection and estimation in regression with grouped variables", JRSS-B 2006.
      Wen, Wu, Wang, Chen & Li, "Learning structured sparsity in deep neural networks", NeurIPS 2016.
      Scardapane, Comminiello, Hussain & Uncini, "Group sparse regularization for deep neural
      networks", Neurocomputing 2017.
    """
    axis = check_axis(axis)
    if axis is not None:
        inner = elementwise_transform(
            "proximal_group_lasso", {"learning_rate": learning_rate, "weight_decay": weight_decay},
            functools.partial(_leaf_step, axis=axis), mask,
        )
        return optax.GradientTransformation(_checked_init(inner.init, axis, mask), inner.update)
    for key, value in (("learning_rate", learning_rate), ("weight_decay", weight_decay)):
        _hyper.check_hyperparameter(value, key)

    def init_fn(params: Any) -> CountState:
        _tree.check_real(params)
        _tree.resolve_mask(mask, params)
        return _hyper.init_count()

    def update_fn(updates: Any, state: CountState, params: Optional[Any] = None) -> tuple[Any, CountState]:
        params = require_params(params, "proximal_group_lasso")
        s = _hyper.value_at(learning_rate, state.count) * _hyper.value_at(weight_decay, state.count)

        def shrink(targets: list[jax.Array]) -> list[jax.Array]:
            return group_shrink(targets, clip_negative(s.astype(jnp.result_type(*targets))), None)

        return replace_steps("proximal_group_lasso", updates, params, mask, shrink), _hyper.next_count(state)

    return optax.GradientTransformation(init_fn, update_fn)


def _leaf_step(update: jax.Array, param: jax.Array, values: Mapping[str, jax.Array], axis: Axis) -> jax.Array:
    compute = compute_dtype(param.dtype)
    weight = param.astype(compute)
    s = clip_negative((values["learning_rate"] * values["weight_decay"]).astype(compute))
    return group_shrink([weight + update.astype(compute)], s, axis)[0] - weight


def _checked_init(init: Any, axis: Axis, mask: Mask) -> Any:
    """``init`` that also checks ``axis`` against every selected floating leaf (naming the leaf)."""

    def init_fn(params: Any) -> Any:
        state = init(params)
        selected = _tree.resolve_mask(mask, params)
        flat = jax.tree_util.tree_flatten_with_path(params)[0]
        for (path, leaf), flag in zip(flat, selected, strict=True):
            if flag and _tree.is_floating(leaf):
                normalized_axes(axis, tuple(jnp.shape(leaf)), _tree.path_to_string(path))
        return state

    return init_fn
