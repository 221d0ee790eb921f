"""Every misuse raises early, with a message that names the argument, the value and the fix.

``MISUSES`` is the single table of misuses: each row is run here, and the
README's "Errors" table is generated from the same rows (condition, exception,
the message's opening, the fix).

Decided rules tested at the end: integer and bool leaves are skipped (passed
through unchanged); complex leaves raise ``TypeError`` at ``init``; Python
float leaves are regularized like 0-d arrays.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optreg

PARAMS = {"params": {"Dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}}


@dataclasses.dataclass(frozen=True)
class Misuse:
    """One misuse: ``call()`` must raise ``error`` with every string of ``mentions`` in its message."""

    condition: str  # what the user did (README)
    call: Callable[[], Any]
    error: type[Exception]
    mentions: tuple[str, ...]  # the argument's name, the value, the hint towards the fix
    fix: str  # what to do instead (README)
    when: str = "construction"  # construction | init | update | call


def init(tx: optax.GradientTransformation, params: Any = PARAMS) -> Any:
    return tx.init(params)


def update_without_params(tx: optax.GradientTransformation) -> Any:
    return tx.update(PARAMS, tx.init(PARAMS))


def update_with_other_params(tx: optax.GradientTransformation) -> Any:
    return tx.update(PARAMS, tx.init(PARAMS), {"params": {}})


CORE = [
    Misuse("exponent q <= 0", lambda: optreg.add_decayed_weights_q(0.1, q=0.0), ValueError,
           ("q", "q > 0", "q=0.0"), "use q > 0 (q = 0, the L0 count, only in `proximal_lq`)"),
    Misuse("exponent q NaN or inf", lambda: optreg.add_decayed_weights_q(0.1, q=float("inf")), ValueError,
           ("q", "finite", "q=inf"), "use a finite q"),
    Misuse("exponent q not a number", lambda: optreg.add_decayed_weights_q(0.1, q="2"), TypeError,
           ("q", "'2'", "str"), "pass a Python float such as 2.0"),
    Misuse("exponent q a JAX array (e.g. injected)", lambda: optreg.add_decayed_weights_q(0.1, q=jnp.asarray(2.0)),
           TypeError, ("q", "static", "static_args=('q',)"),
           "q picks the code path at trace time: `optax.inject_hyperparams(..., static_args=('q',))`"),
    Misuse("λ negative, NaN or inf", lambda: optreg.add_decayed_weights_q(-0.1), ValueError,
           ("weight_decay", ">= 0", "-0.1"), "use λ >= 0"),
    Misuse("λ a bool", lambda: optreg.add_decayed_weights_q(True), TypeError,
           ("weight_decay", "bool", "True"), "pass a float"),
    Misuse("λ of the wrong type (str, list, None, complex)", lambda: optreg.add_decayed_weights_q([0.1]),
           TypeError, ("weight_decay", "[0.1]", "schedule"), "a float, a 0-d array or an optax schedule"),
    Misuse("λ an array with a shape", lambda: optreg.add_decayed_weights_q(jnp.ones(3)), ValueError,
           ("weight_decay", "scalar", "(3,)", "per_layer_decay"), "a scalar; one λ per layer: `per_layer_decay`"),
    Misuse("schedule returning a non-scalar", lambda: optreg.add_decayed_weights_q(lambda count: jnp.ones(3)),
           ValueError, ("weight_decay", "schedule", "scalar", "(3,)"), "make the schedule return a scalar"),
    Misuse("schedule that fails on an int32 count", lambda: optreg.add_decayed_weights_q(lambda a, b: a),
           TypeError, ("weight_decay", "schedule", "count"), "a schedule takes one argument, the step count"),
    Misuse("eps <= 0", lambda: optreg.add_decayed_weights_q(0.1, eps=0.0), ValueError,
           ("eps", "> 0", "eps=0.0"), "use a small positive floor such as 1e-8"),
    Misuse("elastic-net strength negative / NaN", lambda: optreg.add_elastic_net(-1.0, 0.1), ValueError,
           ("l1", ">= 0", "-1.0"), "use l1, l2 >= 0"),
    Misuse("penalty with a negative λ", lambda: optreg.lq_penalty(PARAMS, -1.0, 2.0), ValueError,
           ("weight_decay", ">= 0", "-1.0"), "use λ >= 0", "call"),
    Misuse("penalty with a bad step count", lambda: optreg.lq_penalty(PARAMS, optax.constant_schedule(0.1), count=1.5),
           TypeError, ("count", "1.5"), "pass the transform's int update count", "call"),
    Misuse("mask with another structure than the params",
           lambda: init(optreg.add_decayed_weights_q(0.1, mask={"params": {"Dense_1": True}})), ValueError,
           ("mask", "structure", "params/Dense_0/kernel"),
           "a pytree of bools shaped like the params (or a prefix), or a callable params -> such a pytree", "init"),
    Misuse("mask with non-bool leaves",
           lambda: init(optreg.add_decayed_weights_q(0.1, mask={"params": {"Dense_0": {"kernel": 1, "bias": 0}}})),
           TypeError, ("mask", "params/Dense_0/bias", "bool", "0"), "use True/False leaves", "init"),
    Misuse("complex parameters", lambda: init(optreg.add_decayed_weights_q(0.1), {"w": jnp.ones(2, jnp.complex64)}),
           TypeError, ("params", "'w'", "complex64", "real"), "split into real and imaginary parts, or mask it out",
           "init"),
    Misuse("`update` without params", lambda: update_without_params(optreg.add_decayed_weights_q(0.1)), ValueError,
           ("add_decayed_weights_q", "params", "tx.update(grads, state, params)"),
           "call `tx.update(grads, state, params)` (Flax's `TrainState`/`nnx.Optimizer` do)", "update"),
    Misuse("`update` with params of another structure than the updates",
           lambda: update_with_other_params(optreg.add_decayed_weights_q(0.1)), ValueError,
           ("params", "same pytree structure", "updates"), "pass the params the gradients were taken of", "update"),
    Misuse("per-layer rules empty", lambda: optreg.per_layer_decay({}), ValueError,
           ("weight_decays", "empty", "Dense_0/kernel"), "give at least one rule `{regex: λ}`"),
    Misuse("per-layer rules None", lambda: optreg.per_layer_decay(None), TypeError,
           ("weight_decays", "mapping regex", "callable", "pytree"), "a mapping, a callable or a pytree of λ"),
    Misuse("per-layer rule not a valid regex", lambda: optreg.per_layer_decay({"(": 0.1}), ValueError,
           ("weight_decays", "'('", "regular expression"), "fix the pattern (it is used with `re.search`)"),
    Misuse("per-layer rule with a negative λ", lambda: optreg.per_layer_decay({"kernel": -0.1}), ValueError,
           ("weight_decays['kernel']", ">= 0", "-0.1"), "use λ >= 0"),
    Misuse("per-layer rule matching no parameter (regex matching nothing)",
           lambda: init(optreg.per_layer_decay({"Dense_9": 0.1})), ValueError,
           ("'Dense_9'", "matches no parameter", "params/Dense_0/kernel"),
           "fix the pattern against the listed paths (`optreg.describe(tx, params)` shows them)", "init"),
    Misuse("per-layer rule shadowed by an earlier rule",
           lambda: init(optreg.per_layer_decay({"Dense": 0.1, "kernel": 0.2})), ValueError,
           ("'kernel'", "matches no parameter", "first match wins"), "order rules from specific to general",
           "init"),
    Misuse("per-layer rule matching only masked-out parameters",
           lambda: init(optreg.per_layer_decay({"bias": 0.1}, mask=optreg.decay_mask)), ValueError,
           ("'bias'", "mask", "Change the rule or the mask"), "change the rule or the mask", "init"),
    Misuse("per-layer pytree of λ with another structure",
           lambda: init(optreg.per_layer_decay({"params": {"Dense_1": {"kernel": 0.1}}})), ValueError,
           ("weight_decays", "structure", "params/Dense_0/kernel"), "mirror the params' structure", "init"),
    Misuse("per-layer callable returning a bad λ", lambda: init(optreg.per_layer_decay(lambda path, leaf: -1.0)),
           ValueError, ("weight_decays at 'params/Dense_0/bias'", ">= 0", "-1.0"),
           "return λ >= 0 or None (not decayed)", "init"),
    Misuse("`update` of per_layer_decay without params",
           lambda: update_without_params(optreg.per_layer_decay({"kernel": 0.1})), ValueError,
           ("per_layer_decay", "params"), "call `tx.update(grads, state, params)`", "update"),
]


OPERATORS_AND_SOFT_SHARING = [
    Misuse("ball radius negative / NaN", lambda: optreg.project_lq_ball(-1.0), ValueError,
           ("radius", ">= 0", "-1.0"), "use radius >= 0"),
    Misuse("projection exponent q < 1", lambda: optreg.project_lq_ball(1.0, q=0.5), ValueError,
           ("q", ">= 1", "q=0.5", "proximal_lq"), "q >= 1 (convex ball); for q < 1 use `proximal_lq`"),
    Misuse("projection of a tree with a negative radius",
           lambda: optreg.projections.projection_lq_ball(PARAMS, -1.0, 2.0),
           ValueError, ("radius", ">= 0"), "use radius >= 0", "call"),
    Misuse("proximal exponent q < 0", lambda: optreg.proximal_lq(0.1, 0.1, q=-1.0), ValueError,
           ("q", ">= 0", "q=-1.0"), "use q >= 0"),
    Misuse("proximal learning rate negative", lambda: optreg.proximal_lq(-0.1, 0.1), ValueError,
           ("learning_rate", ">= 0", "-0.1"), "pass the optimizer's (positive) learning rate or schedule"),
    Misuse("prox scale negative", lambda: optreg.prox.prox_lq(jnp.ones(2), -1.0, 1.0), ValueError,
           ("scale", ">= 0", "-1.0"), "use scale = learning_rate·λ >= 0", "call"),
    Misuse("prox of an integer array", lambda: optreg.prox.prox_lq(jnp.arange(2), 0.1, 1.0), TypeError,
           ("x", "floating", "int32", "astype"), "cast to a float dtype first", "call"),
    Misuse("num_components < 2", lambda: optreg.soft_share_prior(1e-3, 1), ValueError,
           ("num_components", ">= 2", "1"), "use K >= 2 (the zero component plus at least one)"),
    Misuse("num_components not an int", lambda: optreg.soft_share_prior(1e-3, 2.5), TypeError,
           ("num_components", "int", "2.5", "static_args"), "a Python int (static)"),
    Misuse("soft sharing with the old strength keyword", lambda: optreg.soft_share_prior(num_components=17,
           strength=1e-3), TypeError, ("strength", "weight_decay"), "pass `weight_decay=τ`, e.g. 0.005 / N_train"),
    Misuse("`update` of soft_share_prior without params",
           lambda: update_without_params(optreg.soft_share_prior(1e-3, 3)), ValueError,
           ("soft_share_prior", "params"), "call `tx.update(grads, state, params)`", "update"),
    Misuse("group labels with another structure than the params",
           lambda: init(optreg.share_within_groups(0.1, {"w": np.array([0, 1])})), ValueError,
           ("groups", "structure", "params/Dense_0/kernel"), "one int label array per leaf, or None",
           "init"),
    Misuse("group labels not integers", lambda: optreg.share_within_groups(0.1, {"w": np.array([0.0, 1.0])}),
           TypeError, ("groups", "integer", "float64"), "use int labels 0..G−1 (−1: no group)"),
]
MISUSES = CORE + OPERATORS_AND_SOFT_SHARING


@pytest.mark.parametrize("misuse", MISUSES, ids=lambda m: m.condition)
def test_misuse_raises_a_named_error(misuse):
    with pytest.raises(misuse.error) as info:
        misuse.call()
    message = str(info.value)
    for needle in misuse.mentions:
        assert needle in message, f"{needle!r} not in {message!r}"


def test_every_registry_transform_rejects_a_nan_hyperparameter_at_construction():
    """Construction alone raises: nothing waits for init or the first update. Every float
    hyperparameter of every transform in optreg's registry is tried."""
    from optreg._registry import TRANSFORMS

    params = {"w": jnp.ones((3, 2))}
    tried = 0
    for entry in TRANSFORMS:
        kwargs = entry.kwargs(params)
        for key, value in kwargs.items():
            if key in entry.static or not isinstance(value, float):
                continue
            with pytest.raises(ValueError, match="finite"):
                entry.factory(**{**kwargs, key: float("nan")})
            tried += 1
    assert tried >= len(TRANSFORMS)


# ---------------------------------------------------------------------------------------------
# The decided rules for non-float leaves.
# ---------------------------------------------------------------------------------------------


def transforms_for_mixed_leaves() -> list[tuple[str, optax.GradientTransformation]]:
    """Every transform of optreg's registry, built strong enough to change every floating leaf."""
    return [
        ("add_decayed_weights_q", optreg.add_decayed_weights_q(0.5, 1.5)),
        ("add_elastic_net", optreg.add_elastic_net(0.5, 0.5)),
        ("per_layer_decay", optreg.per_layer_decay(lambda path, leaf: 0.5)),
        ("proximal_lq", optreg.proximal_lq(1.0, 0.5, q=1.0)),
        ("proximal_elastic_net", optreg.proximal_elastic_net(1.0, 0.5, 0.5)),
        ("project_lq_ball", optreg.project_lq_ball(0.5, q=2.0)),
        ("soft_share_prior", optreg.soft_share_prior(0.5, 3, mode="exact")),
        ("share_within_groups",
         optreg.share_within_groups(0.5, {"w": np.array([[0, 0]]), "steps": None, "flag": None})),
        ("add_cautious_weight_decay", optreg.add_cautious_weight_decay(0.5)),
        ("decay_towards", optreg.decay_towards(
            {"w": jnp.zeros((1, 2)), "steps": jnp.zeros(2, jnp.int32), "flag": jnp.asarray(False)}, 0.5)),
        ("independent_weight_decay", optreg.independent_weight_decay(0.5)),
        ("add_orthogonal_decay", optreg.add_orthogonal_decay(0.5)),
        ("add_spectral_decay", optreg.add_spectral_decay(0.5)),
        ("proximal_group_lasso", optreg.proximal_group_lasso(1.0, 0.5)),
        ("project", optreg.project(lambda tree: jax.tree.map(lambda x: 0.5 * x, tree))),
        ("scale_by_learning_rate_and_prox", optreg.scale_by_learning_rate_and_prox(
            1.0, lambda learning_rate: optreg.proximal_lq(learning_rate, 0.5, 1.0))),
    ]


def test_the_mixed_leaves_table_covers_the_registry():
    from optreg._registry import TRANSFORMS

    assert {entry.name for entry in TRANSFORMS} <= {name for name, _ in transforms_for_mixed_leaves()}


@pytest.mark.parametrize("name, tx", transforms_for_mixed_leaves(), ids=lambda x: x if isinstance(x, str) else "")
def test_integer_and_bool_leaves_pass_through_unchanged(name, tx):
    params = {"w": jnp.asarray([[1.0, -2.0]]), "steps": jnp.asarray([3, 4], jnp.int32), "flag": jnp.asarray(True)}
    updates = {"w": jnp.asarray([[0.5, 0.5]]), "steps": jnp.asarray([7, 8], jnp.int32), "flag": jnp.asarray(False)}
    out, _ = jax.jit(tx.update)(updates, tx.init(params), params)  # jit: eager soft sharing takes ~10 s
    assert np.array_equal(out["steps"], updates["steps"])
    assert out["steps"].dtype == jnp.int32 and out["flag"].dtype == jnp.bool_
    assert not bool(out["flag"])
    assert not np.array_equal(np.asarray(out["w"]), np.asarray(updates["w"])), f"{name} did nothing to w"


@pytest.mark.parametrize("name, tx", transforms_for_mixed_leaves(), ids=lambda x: x if isinstance(x, str) else "")
def test_complex_leaves_raise_at_init(name, tx):
    with pytest.raises(TypeError, match="complex"):
        tx.init({"w": jnp.ones(2), "z": jnp.ones(2, jnp.complex64)})


def test_complex_leaves_raise_in_penalties():
    z = {"z": jnp.ones(2, jnp.complex64)}
    for penalty in (lambda: optreg.lq_penalty(z, 1.0, 2.0), lambda: optreg.elastic_net_penalty(z, 1.0, 1.0),
                    lambda: optreg.per_layer_penalty(z, {"z": 1.0}, mask=None)):
        with pytest.raises(TypeError, match="complex"):
            penalty()


def test_integer_leaves_count_nothing_in_penalties():
    params = {"w": jnp.asarray([3.0]), "steps": jnp.asarray([100], jnp.int32)}
    assert float(optreg.lq_penalty(params, 1.0, 2.0)) == pytest.approx(4.5)
    assert float(optreg.elastic_net_penalty(params, 1.0, 0.0)) == pytest.approx(3.0)


def test_errors_are_raised_before_any_tracing():
    """A bad mask fails in init, outside jit; a jitted update never sees a misuse first."""
    tx = optreg.add_decayed_weights_q(0.1, mask={"other": True})
    with pytest.raises(ValueError, match="mask"):
        jax.jit(tx.init)(PARAMS)
