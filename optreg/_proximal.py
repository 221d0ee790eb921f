"""Proximal-gradient transforms: the gradient step, then the penalty's prox (exact zeros).

Two forms. The first is chained after the optimizer and is told the learning
rate again::

    optax.chain(optax.adam(lr), optreg.proximal_lq(lr, weight_decay=1e-3, q=1.0))

For q = 1 this is ISTA (proximal gradient descent) on loss + λ·‖w‖₁: weights
land on exactly 0 and stay there while |∂loss/∂w| < λ. The penalty itself is
:func:`optreg.lq_penalty` (the same λ, the same (λ/q)·Σ|w|^q convention).
``learning_rate`` must be the step size that ``u`` was scaled by: the same
float or the same optax schedule object as the optimizer's (the transform
keeps its own count, so the k-th update uses ``schedule(k)`` exactly as
``optax.scale_by_learning_rate`` does). If the optimizer's rate is changed
at run time and this one is not (``optax.inject_hyperparams`` on the
optimizer alone, ``optax.contrib.reduce_on_plateau``), the prox threshold
silently stops following the step size.

The second form takes the learning rate once, in the place of optax's
``scale_by_learning_rate``, applies it and then the prox with the same
rate, so the two cannot drift apart::

    optax.chain(optax.scale_by_adam(),
                optreg.scale_by_learning_rate_and_prox(lr, functools.partial(optreg.proximal_lq,
                                                                              weight_decay=1e-3, q=1.0)))
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optreg import _hyper, _tree
from optreg._checks import check_exponent
from optreg._elementwise import elementwise_transform
from optreg._hyper import Hyperparameter
from optreg._numerics import compute_dtype
from optreg._prox_operators import prox_elastic_net_unchecked, prox_lq_unchecked
from optreg._tree import Mask


def proximal_lq(
    learning_rate: Hyperparameter,
    weight_decay: Hyperparameter,
    q: float = 1.0,
    *,
    mask: Mask = None,
) -> optax.GradientTransformation:
    """Replaces the step w + u by prox_lq(w + u, learning_rate·weight_decay, q).

    The returned updates u' satisfy params + u' = prox_lq(params + u, s, q)
    with s = learning_rate·weight_decay (up to one rounding of the final
    subtraction; exact zeros stay exact). This is the proximal-gradient step
    for the penalty (λ/q)·Σ|w|^q of :func:`optreg.lq_penalty` (q = 0: λ·#{w ≠ 0}).

    Place it last in the chain, after the learning rate has been applied::

        optax.chain(optax.adam(schedule), optreg.proximal_lq(schedule, 1e-4, q=1.0))

    With plain SGD the fixed points are exactly the minimisers (stationary
    points for q < 1) of loss + penalty. With momentum or Adam the result is
    still sparse but the fixed points are those of the preconditioned step.
    The learning rate is given twice here; :func:`optreg.scale_by_learning_rate_and_prox`
    takes it once (use it when the rate changes at run time). Derivatives
    through the step (in the params, the updates, λ and the rate) are exact.

    Args:
      learning_rate: the step size u was scaled by: float, 0-d array or the
        same optax schedule as the optimizer's (evaluated at this transform's
        own count: the k-th update uses ``schedule(k)``).
      weight_decay: λ >= 0: float, 0-d array or schedule. A value (or rate)
        that is negative at run time acts as 0.
      q: exponent >= 0, static (list it in ``static_args`` of
        ``optax.inject_hyperparams``). See :func:`optreg.prox.prox_lq` for the forms.
      mask: optax-style mask (keyword-only): a pytree of bools (or a prefix)
        or a function of the params; unselected leaves get the plain update u.

    Returns:
      An ``optax.GradientTransformation`` with a :class:`optreg.CountState`;
      ``update`` requires ``params``.

    Raises:
      ValueError, TypeError: at construction for a bad ``q`` or a negative /
        non-scalar hyperparameter; at ``init`` for a mask that does not fit.

    Example:
      >>> import jax.numpy as jnp, numpy as np, optax, optreg
      >>> params = {"w": jnp.array([1.0, 0.05])}
      >>> tx = optax.chain(optax.sgd(0.1), optreg.proximal_lq(0.1, weight_decay=1.0, q=1.0))
      >>> updates, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
      >>> np.asarray(optax.apply_updates(params, updates)["w"], float).round(3).tolist()
      [0.9, 0.0]

    References:
      Parikh & Boyd, "Proximal Algorithms", Foundations and Trends in Optimization, 2014 (§4.2).
      Beck & Teboulle, "A fast iterative shrinkage-thresholding algorithm for linear inverse
      problems", SIAM J. Imaging Sciences, 2009 (ISTA).
    """
    q = check_exponent(q, allow_zero=True)

    def step(update: jax.Array, param: jax.Array, values: Mapping[str, jax.Array]) -> jax.Array:
        compute = compute_dtype(param.dtype)
        weight = param.astype(compute)
        target = weight + update.astype(compute)
        scale = values["learning_rate"] * values["weight_decay"]
        return prox_lq_unchecked(target, scale, q) - weight

    return elementwise_transform(
        "proximal_lq", {"learning_rate": learning_rate, "weight_decay": weight_decay}, step, mask
    )


def proximal_elastic_net(
    learning_rate: Hyperparameter,
    l1: Hyperparameter,
    l2: Hyperparameter,
    *,
    mask: Mask = None,
) -> optax.GradientTransformation:
    """Replaces the step w + u by prox_elastic_net(w + u, learning_rate·l1, learning_rate·l2).

    The proximal-gradient step for :func:`optreg.elastic_net_penalty`
    l1·‖w‖₁ + (l2/2)·‖w‖². In sklearn's ``ElasticNet(alpha, l1_ratio)`` terms
    (data term ‖y − Xw‖²/(2n)): ``l1 = alpha·l1_ratio``, ``l2 = alpha·(1 − l1_ratio)``.

    Args:
      learning_rate: the step size u was scaled by (float, 0-d array or the
        optimizer's schedule, kept in step by an internal count).
      l1: L1 strength >= 0 (float, 0-d array or schedule).
      l2: L2 strength >= 0 (float, 0-d array or schedule).
      mask: optax-style mask (keyword-only); unselected leaves get the plain update u.

    Returns:
      An ``optax.GradientTransformation`` with a :class:`optreg.CountState`;
      ``update`` requires ``params``.

    Example:
      >>> import jax.numpy as jnp, optax, optreg
      >>> params = {"w": jnp.array([3.0, 0.05])}
      >>> tx = optax.chain(optax.sgd(1.0), optreg.proximal_elastic_net(1.0, l1=0.5, l2=1.0))
      >>> updates, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
      >>> optax.apply_updates(params, updates)["w"].tolist()
      [1.25, 0.0]

    References:
      Zou & Hastie, "Regularization and variable selection via the elastic net", JRSS-B 2005.
      Parikh & Boyd, "Proximal Algorithms", 2014 (§6.5.3).
    """

    def step(update: jax.Array, param: jax.Array, values: Mapping[str, jax.Array]) -> jax.Array:
        compute = compute_dtype(param.dtype)
        weight = param.astype(compute)
        target = weight + update.astype(compute)
        rate = values["learning_rate"]
        return prox_elastic_net_unchecked(target, rate * values["l1"], rate * values["l2"]) - weight

    return elementwise_transform(
        "proximal_elastic_net", {"learning_rate": learning_rate, "l1": l1, "l2": l2}, step, mask
    )


class LearningRateAndProxState(NamedTuple):
    """State of :func:`scale_by_learning_rate_and_prox`: the step's state and the prox transform's."""

    step: Any
    prox: Any


def _step_transform(learning_rate: Any) -> optax.GradientTransformationExtraArgs:
    if isinstance(learning_rate, optax.GradientTransformation):
        return optax.with_extra_args_support(learning_rate)
    _hyper.check_hyperparameter(learning_rate, "learning_rate")
    return optax.with_extra_args_support(optax.scale_by_learning_rate(learning_rate))


def scale_by_learning_rate_and_prox(
    learning_rate: Any,
    proximal: Callable[[Any], optax.GradientTransformation],
) -> optax.GradientTransformationExtraArgs:
    """The learning-rate step and then a prox with that same rate: a proximal step that cannot drift.

    Use it in the place of ``optax.scale_by_learning_rate``, after the
    optimizer's preconditioner::

        prox = functools.partial(optreg.proximal_lq, weight_decay=1e-4, q=1.0)
        tx = optax.chain(optax.scale_by_adam(), optreg.scale_by_learning_rate_and_prox(1e-3, prox))

    Each update applies u = −η·d (as ``scale_by_learning_rate``) and then
    ``proximal(η)``: params + u' = prox(params + u, η·λ). The rate η is given
    once, so whatever changes it changes the prox threshold too:

    * a schedule (both use ``schedule(k)`` at the k-th update);
    * ``optax.inject_hyperparams`` on the whole optimizer (a factory that
      passes its ``learning_rate`` here), changed mid-run;
    * a scaling transform given as ``learning_rate``, e.g.
      ``optax.chain(optax.scale_by_learning_rate(1e-3), optax.contrib.reduce_on_plateau())``:
      η is then the factor that transform applies at this update (read by
      passing a scalar 1 through it with the same state and extra arguments),
      so the plateau's reductions reach the prox.

    ``optreg.proximal_lq(lr, ...)`` chained after ``optax.adam(lr)`` is the
    form that takes the rate twice; it drifts when only the optimizer's copy is changed.

    Args:
      learning_rate: the step size η > 0: a float, a 0-d array, an optax
        schedule, or a transform that multiplies every update by one scalar
        and flips its sign like ``scale_by_learning_rate`` (its state must not
        depend on the params; checked at ``init``). A rate that is negative at
        run time gives no prox (threshold 0).
      proximal: a function ``learning_rate -> transform``, one of optreg's
        proximal transforms with its other arguments bound, e.g.
        ``functools.partial(optreg.proximal_group_lasso, weight_decay=1e-3, axis=0)``
        (static: list it in ``static_args`` of ``optax.inject_hyperparams``).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` (extra arguments such as
      ``value=loss`` for ``reduce_on_plateau`` are passed to the step) with a
      :class:`LearningRateAndProxState`; ``update`` requires ``params``.

    Raises:
      TypeError, ValueError: at construction for a bad rate or a ``proximal``
        that does not build a transform; at ``init`` for a step whose state
        depends on the params (an optimizer, not a scaling).

    Example:
      >>> import functools, jax.numpy as jnp, numpy as np, optax, optreg
      >>> prox = functools.partial(optreg.proximal_lq, weight_decay=1.0, q=1.0)
      >>> tx = optax.chain(optax.scale_by_adam(), optreg.scale_by_learning_rate_and_prox(0.1, prox))
      >>> params = {"w": jnp.array([1.0, 0.05])}
      >>> updates, _ = tx.update({"w": jnp.array([0.0, -1.0])}, tx.init(params), params)
      >>> np.asarray(optax.apply_updates(params, updates)["w"], float).round(3).tolist()
      [0.9, 0.05]

    References:
      Parikh & Boyd, "Proximal Algorithms", 2014 (§4.2: the prox threshold is step size × λ).
      Beck & Teboulle, "A fast iterative shrinkage-thresholding algorithm for linear inverse problems", 2009.
    """
    step = _step_transform(learning_rate)
    if not callable(proximal):
        raise TypeError(f"proximal must be a function learning_rate -> transform, got {proximal!r}.")
    probe_transform = proximal(1.0)
    if not isinstance(probe_transform, optax.GradientTransformation):
        raise TypeError(
            f"proximal(learning_rate) must return an optax transform, got {type(probe_transform).__name__}. "
            "Bind the other arguments, e.g. functools.partial(optreg.proximal_lq, weight_decay=1e-4, q=1.0)."
        )

    def init_fn(params: Any) -> LearningRateAndProxState:
        state = step.init(params)
        alone = step.init(jnp.zeros((), jnp.float32))
        shapes = [jnp.shape(leaf) for leaf in jax.tree.leaves(state)]
        structure: Any = jax.tree.structure(state)  # jax's PyTreeDef is untyped for mypy
        if structure != jax.tree.structure(alone) or shapes != [
            jnp.shape(leaf) for leaf in jax.tree.leaves(alone)
        ]:
            raise ValueError(
                "learning_rate: a transform given as the learning rate must only multiply the updates by one "
                "scalar (scale_by_learning_rate, scale_by_schedule, contrib.reduce_on_plateau, ...); its state "
                "depends on the params, so it is an optimizer. Chain the optimizer's preconditioner before this "
                "transform (e.g. optax.scale_by_adam()) and pass only the scaling here."
            )
        return LearningRateAndProxState(step=state, prox=probe_transform.init(params))

    def update_fn(
        updates: Any, state: LearningRateAndProxState, params: Optional[Any] = None, **extra_args: Any
    ) -> tuple[Any, LearningRateAndProxState]:
        scaled, step_state = step.update(updates, state.step, params, **extra_args)
        # integer and bool updates pass through (optreg's rule for non-floating leaves), None stays None
        scaled = jax.tree.map(lambda new, old: new if old is not None and _tree.is_floating(old) else old,
                              scaled, updates, is_leaf=lambda x: x is None)
        floating = [leaf for leaf in jax.tree.leaves(updates) if _tree.is_floating(leaf)]
        dtype = jnp.result_type(jnp.float32, *floating)  # float64 params get a float64 rate
        probe, _ = step.update(jnp.ones((), dtype), state.step, None, **extra_args)
        rate = -jnp.asarray(probe)
        new_updates, prox_state = proximal(rate).update(scaled, state.prox, params)
        return new_updates, LearningRateAndProxState(step=step_state, prox=prox_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
