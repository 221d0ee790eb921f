"""Projections as constraints in a chain: the Lq ball (whole tree, per leaf or per unit) and any projection.

Projected gradient descent replaces the step w + u by P(w + u)::

    optax.chain(optax.adam(lr), optreg.project_lq_ball(radius=10.0, q=2.0))
    optax.chain(optax.adam(lr), optreg.project_lq_ball(3.0, q=2.0, axis=0, mask=kernels))  # max-norm per unit
    optax.chain(optax.adam(lr), optreg.project(optax.projections.projection_non_negative))

The Lq ball is the constrained form of the general regularizer (λ/q)·Σ|w|^q
(Bishop & Bishop 2024, §9.2): minimising the loss under Σ|w|^q <= η is
equivalent to the penalised problem for a matching λ.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optreg import _hyper, _tree
from optreg._grouping import Axis, check_axis, normalized_axes
from optreg._hyper import CountState, Hyperparameter
from optreg._joint import replace_steps
from optreg._lq_ball import check_ball_exponent, project_ball
from optreg._numerics import compute_dtype
from optreg._strengths import check_strength_value, clip_negative, per_leaf
from optreg._tree import Mask


def _slice_shape(axis: Axis) -> Callable[[Any, str], tuple[int, ...]]:
    def shape(leaf: Any, where: str) -> tuple[int, ...]:
        axes = normalized_axes(axis, tuple(jnp.shape(leaf)), where)
        return tuple(1 if i in axes else n for i, n in enumerate(jnp.shape(leaf)))

    return shape


def projection_lq_ball(tree: Any, radius: Any, q: float = 2.0, *, axis: Axis = None) -> Any:
    """Euclidean projection of a pytree onto {w : Σ|w|^q <= radius^q} (‖w‖_q <= radius), q >= 1.

    With ``axis=None`` the norm is taken over all floating leaves together, as
    optax's projections do; with ``axis`` (an int or a tuple, the axes reduced
    within one ball, as numpy's) every slice of every leaf over those axes is
    projected onto its own ball: Keras' ``MaxNorm(m, axis=0)`` on a Dense
    kernel of shape (in, out) is ``projection_lq_ball(kernel, m, 2.0, axis=0)``.
    Non-floating leaves pass through; half precision is computed in float32.

    q = ∞ is ``optax.projections.projection_linf_ball``, q = 2 the rescaling
    x·r/‖x‖₂ (exact for every float, where optax's squared norm overflows),
    q = 1 equals ``projection_l1_ball`` without its sort (Michelot's
    iteration), any other q >= 1 a bisection on the multiplier of
    :func:`optreg.prox.prox_lq`. Derivatives in ``tree`` and ``radius``
    (forward and reverse mode) are exact, by implicit differentiation of the
    optimality conditions where the value comes from an iteration.

    Args:
      tree: a pytree of arrays.
      radius: >= 0. With ``axis=None`` a number or 0-d array; with ``axis``
        also an array (or a pytree with ``tree``'s structure) broadcasting
        against each leaf's per-slice (keepdims) shape. A concrete negative
        value is an error; a traced one that is negative at run time acts as
        0 (everything projects to 0).
      q: 1 <= q <= ∞ (``math.inf``), static.
      axis: ``None``, an int or a tuple of ints (keyword-only).

    Returns:
      A pytree with the structure, shapes and dtypes of ``tree``.

    Example:
      >>> import jax.numpy as jnp, numpy as np
      >>> from optreg.projections import projection_lq_ball
      >>> np.asarray(projection_lq_ball({"w": jnp.array([3.0, 4.0])}, 1.0)["w"], float).round(3).tolist()
      [0.6, 0.8]
      >>> kernel = jnp.array([[3.0, 0.1], [4.0, 0.1]])  # two units (columns): norms 5 and 0.14
      >>> np.asarray(projection_lq_ball(kernel, 1.0, axis=0), float).round(3).tolist()
      [[0.6, 0.1], [0.8, 0.1]]

    References:
      Parikh & Boyd, "Proximal Algorithms", 2014 (§6.5).
      Duchi, Shalev-Shwartz, Singer & Chandra, "Efficient projections onto the l1-ball for learning
      in high dimensions", ICML 2008.
      Srivastava et al., "Dropout: a simple way to prevent neural networks from overfitting", JMLR 2014
      (max-norm constraints on each unit).
    """
    q = check_ball_exponent(q)
    axis = check_axis(axis)
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    chosen = [index for index, leaf in enumerate(leaves) if _tree.is_floating(leaf)]
    inputs = [jnp.asarray(leaves[index]) for index in chosen]
    computed = [leaf.astype(compute_dtype(leaf.dtype)) for leaf in inputs]
    if axis is None:
        if not jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(radius)) or np.ndim(radius) != 0:
            raise ValueError(
                f"radius must be one number with axis=None (all leaves share one ball), got {radius!r}. "
                "For one ball per slice pass axis."
            )
        check_strength_value(radius, "radius")
        projected = project_ball(computed, clip_negative(jnp.asarray(radius)), q) if computed else []
    else:
        radii = per_leaf(radius, tree, "radius", _slice_shape(axis), "the per-slice shape of the leaf")
        projected = [
            project_ball([x], clip_negative(jnp.asarray(radii[index])), q, axis)[0]
            for index, x in zip(chosen, computed)
        ]
    for index, leaf, result in zip(chosen, inputs, projected):
        leaves[index] = result.astype(leaf.dtype) if leaf.dtype == result.dtype else \
            _rounded_toward_zero(result, leaf.dtype)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _rounded_toward_zero(result: jax.Array, dtype: Any) -> jax.Array:
    """``result`` cast to a half-precision ``dtype`` with every |entry| rounded down, never up: the cast
    stays inside any ball the float32 ``result`` is in, for every q (to nearest, a bf16 unit of norm 0.25
    came out at 0.25039, and for q = ∞ a radius the half-precision grid cannot hold, e.g. 1e-6, was
    exceeded). The derivative is the cast's: the one-ulp correction is held constant."""
    z = result.astype(dtype)
    held = jax.lax.stop_gradient(z)
    outward = jnp.abs(held.astype(result.dtype)) > jnp.abs(jax.lax.stop_gradient(result))
    return z + (jnp.where(outward, jnp.nextafter(held, jnp.zeros_like(held)), held) - held)


def project_lq_ball(
    radius: Hyperparameter,
    q: float = 2.0,
    *,
    mask: Mask = None,
    per_leaf: bool = False,
    axis: Axis = None,
) -> optax.GradientTransformation:
    """Projected gradient: replaces the step w + u by its projection onto Σ|w|^q <= radius^q.

    The returned updates u' satisfy params + u' = P(params + u), where P is
    :func:`optreg.projections.projection_lq_ball` over all selected leaves
    together (the default, as optax's projections), over each selected leaf on
    its own (``per_leaf=True``), or over every slice of each selected leaf
    (``axis``: each unit gets its own ball; Keras' ``MaxNorm(m, axis=0)`` on
    Dense kernels is ``project_lq_ball(m, q=2, axis=0, mask=kernels)``). Place
    it last in the chain, after the learning rate. ``optax.apply_updates`` adds u' to params
    in floating point, so the constraint holds up to that one rounding (a weight on the
    boundary may land one unit in the last place outside it); project the params themselves
    (``projection_lq_ball(params, ...)``) where it must hold to the bit.

    This is the constrained form of the general regularizer Σ|w|^q
    (Bishop & Bishop 2024, §9.2): a radius here plays the role of the
    strength λ of :func:`optreg.add_decayed_weights_q` / :func:`optreg.proximal_lq`.

    Args:
      radius: ball radius >= 0: float, 0-d array or optax schedule (the k-th
        update uses ``schedule(k)``); works under ``optax.inject_hyperparams``.
        A concrete negative value is an error; a traced or scheduled value
        that is negative at run time acts as 0 (the selected weights become 0),
        never flipping a sign.
      q: 1 <= q <= ∞ (``math.inf``), static.
      mask: optax-style mask; unselected leaves keep the plain update and do
        not count towards the norm.
      per_leaf: project each selected leaf onto its own ball (static).
      axis: the axes reduced within one ball (static): every slice of each
        selected leaf over them is projected on its own (``per_leaf`` is then
        implied). Checked against the params at ``init``.

    Returns:
      An ``optax.GradientTransformation`` with a :class:`optreg.CountState`;
      ``update`` requires ``params``. ``None`` updates pass through.

    Raises:
      ValueError, TypeError: at construction for q < 1, a bad radius, a
        non-bool ``per_leaf`` or a bad ``axis``; at ``init`` for a mask or an
        ``axis`` that does not fit the params (the message names the leaf).

    Example:
      >>> import jax.numpy as jnp, numpy as np, optax, optreg
      >>> params = {"kernel": jnp.array([[3.0, 0.1], [4.0, 0.1]])}
      >>> tx = optax.chain(optax.sgd(0.1), optreg.project_lq_ball(1.0, q=2.0, axis=0))
      >>> updates, _ = tx.update({"kernel": jnp.zeros((2, 2))}, tx.init(params), params)
      >>> np.asarray(optax.apply_updates(params, updates)["kernel"], float).round(3).tolist()
      [[0.6, 0.1], [0.8, 0.1]]

    References:
      Goodfellow, Bengio & Courville, *Deep Learning*, MIT Press 2016, §7.2 (norm penalties as
      constrained optimization).
      Srivastava et al., "Dropout: a simple way to prevent neural networks from overfitting", JMLR 2014
      (max-norm constraints).
    """
    q = check_ball_exponent(q)
    axis = check_axis(axis)
    _hyper.check_hyperparameter(radius, "radius")
    if not isinstance(per_leaf, (bool, np.bool_)):
        raise TypeError(f"per_leaf must be True or False, got {per_leaf!r}.")

    def init_fn(params: Any) -> CountState:
        _tree.check_real(params)
        selected = _tree.resolve_mask(mask, params)
        if axis is not None:
            for (path, leaf), flag in zip(jax.tree_util.tree_flatten_with_path(params)[0], selected, strict=True):
                if flag and _tree.is_floating(leaf):
                    normalized_axes(axis, tuple(jnp.shape(leaf)), _tree.path_to_string(path))
        return _hyper.init_count()

    def update_fn(updates: Any, state: CountState, params: Optional[Any] = None) -> tuple[Any, CountState]:
        value = clip_negative(_hyper.value_at(radius, state.count))

        def new_params(targets: list[jax.Array]) -> list[jax.Array]:
            if axis is None and not per_leaf:
                return project_ball(targets, value, q)
            return [project_ball([target], value, q, axis)[0] for target in targets]

        return replace_steps("project_lq_ball", updates, params, mask, new_params), _hyper.next_count(state)

    return optax.GradientTransformation(init_fn, update_fn)


def project(projection: Callable[[Any], Any], *, mask: Mask = None) -> optax.GradientTransformation:
    """Any projection as a constraint in a chain: params + u' = projection(params + u).

    ``projection`` is a function of a pytree returning a pytree of the same
    structure and shapes, such as optax's own projections, so they become
    constraints without being rewritten::

        optax.chain(optax.adam(lr), optreg.project(optax.projections.projection_non_negative))
        box = lambda w: optax.projections.projection_box(w, optax.tree.full_like(w, -1.0), optax.tree.full_like(w, 1.0))
        optax.chain(optax.adam(lr), optreg.project(box))
        optax.chain(optax.adam(lr), optreg.project(optax.projections.projection_simplex, mask=weights_only))

    The function sees the selected floating leaves (after the step) at once:
    the other positions of the tree are ``optax.MaskedNode`` (empty subtrees,
    as in ``optax.masked``), so whole-tree projections (the simplex, spheres,
    balls) act on the selected leaves only. Half-precision leaves are given in
    float32. Place it last in the chain, after the learning rate. Its
    derivatives are those of ``projection``.

    Args:
      projection: a function ``tree -> tree`` (a pytree, even a callable one,
        is never taken as the function).
      mask: optax-style mask (keyword-only); unselected leaves keep the plain update.

    Returns:
      An ``optax.GradientTransformation`` (state ``optax.EmptyState``);
      ``update`` requires ``params``. ``None`` updates pass through.

    Raises:
      TypeError: at construction if ``projection`` is not a function.
      ValueError: at ``init`` for a mask that does not fit; when tracing
        ``update`` if the function changes the structure or a leaf's shape.

    Example:
      >>> import jax.numpy as jnp, numpy as np, optax, optreg
      >>> params = {"w": jnp.array([0.5, 0.1])}
      >>> tx = optax.chain(optax.sgd(1.0), optreg.project(optax.projections.projection_non_negative))
      >>> updates, _ = tx.update({"w": jnp.array([1.0, -1.0])}, tx.init(params), params)
      >>> np.asarray(optax.apply_updates(params, updates)["w"], float).round(3).tolist()
      [0.0, 1.1]

    References:
      Bertsekas, *Nonlinear Programming*, 3rd ed., Athena Scientific 2016, §3.3 (gradient projection).
    """
    if not (callable(projection) and jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(projection))):
        raise TypeError(
            f"projection must be a function tree -> tree (e.g. optax.projections.projection_non_negative), "
            f"got {projection!r}."
        )

    def init_fn(params: Any) -> optax.EmptyState:
        _tree.check_real(params)
        _tree.resolve_mask(mask, params)
        return optax.EmptyState()

    def update_fn(updates: Any, state: optax.EmptyState, params: Optional[Any] = None) -> tuple[Any, Any]:
        return replace_steps("project", updates, params, mask, projection, as_tree=True), state

    return optax.GradientTransformation(init_fn, update_fn)
