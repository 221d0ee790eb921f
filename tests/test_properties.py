"""Property tests (hypothesis) for hostile inputs: every transform, every float dtype.

Random pytrees (nested dicts/lists, 0-d and empty leaves, int/bool leaves
mixed in), dtypes float64 / float32 / bfloat16 / float16, q in (0, 4],
λ in [0, 10], and the special values 0, -0, ±tiny, ±subnormal, ±1e30 and
±dtype max. Properties (all must hold for finite inputs):

* no NaN, ever; leaves keep dtype and shape; non-floating leaves pass through;
* the term a gradient-form regularizer adds never points against the weight
  (sign(added) == sign(w) or 0) and is 0 where w == 0;
* no inf where q <= 1 (the added term is bounded); for q > 1 (and the l2 part
  of the elastic net) an inf appears only where the true value λ·|w|^(q−1)
  exceeds the dtype's range: such an overflow is the true answer, not a bug;
* updates + added term overflows only where the exact sum exceeds the dtype:
  optreg adds in the updates' dtype without saturating (like
  ``optax.add_decayed_weights``); a gradient already near the dtype's max is a
  diverged run, and clipping it would hide that;
* the added term matches the closed form λ·sign(w)·max(|w|, eps)^(q−1) (eps only
  for q < 1) to the dtype's precision;
* prox never increases |w| and never flips a sign; projections land inside the ball.

Transforms are listed once in ``GRADIENT_CASES`` / ``PROX_CASES`` /
``PROJECTION_CASES``; a new transform is one more entry there. float64 runs
inside ``jax.enable_x64(True)`` so the global flag is never flipped.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import optreg

SETTINGS = settings(
    max_examples=50,  # each test overrides it
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DTYPES = ["float32", "bfloat16", "float16", "float64"]
# 0-d, empty and small shapes; few distinct shapes keep XLA's compile cache warm (the run stays fast).
SHAPES = [(), (0,), (1,), (5,), (2, 3), (3, 0), (2, 1, 2)]
EPS = 1e-8  # optreg._decay.DEFAULT_EPS, restated: the floor the docs promise for q < 1
# Relative accuracy of the added term against the float64 closed form: one rounding of λ·|w|^(q-1)
# to the dtype, plus float32 pow error for the half types and fp32 (|(q-1)·log|w|| up to ~300 ulp).
RTOL = {"float64": 1e-9, "float32": 5e-5, "bfloat16": 1.6e-2, "float16": 2e-3}


def x64_context(dtype: str):
    """float64 needs x64 enabled, but only for this test: never flip the global flag."""
    return jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()


def finfo(dtype: str):
    return jnp.finfo(jnp.dtype(dtype))


def special_values(dtype: str) -> list[float]:
    info = finfo(dtype)
    tiny, sub, big = float(info.tiny), float(info.smallest_subnormal), float(info.max)
    values = [0.0, -0.0, tiny, -tiny, sub, -sub, 3 * sub, 1e30, -1e30, big, -big, 1.0, -1.0, 0.5, -2.0, 1e-9, -1e-4]
    return [v for v in values if abs(v) <= big]  # ±1e30 is inf in float16: not a finite input


def to_dtype(values: np.ndarray, dtype: str) -> jax.Array:
    """float64 numbers -> a jax array of ``dtype``, clipped to stay finite."""
    big = float(finfo(dtype).max)
    return jnp.asarray(np.clip(values, -big, big).astype(np.float64)).astype(jnp.dtype(dtype))


@st.composite
def float_arrays(draw, dtype: str, shape: Optional[tuple] = None):
    """Arrays of ``dtype``: shapes incl. 0-d and empty, values mixing special and ordinary numbers."""
    if shape is None:
        shape = draw(st.sampled_from(SHAPES))
    elements = st.one_of(
        st.sampled_from(special_values(dtype)),
        st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False),
        st.floats(-1e38, 1e38, allow_nan=False, allow_infinity=False),
    )
    return to_dtype(draw(hnp.arrays(np.float64, shape, elements=elements)), dtype)


@st.composite
def hostile_trees(draw, dtype: str):
    """A nested pytree of ``dtype`` arrays, sometimes with int/bool leaves and None mixed in."""
    leaf = st.one_of(
        float_arrays(dtype),
        float_arrays(dtype),
        st.just(jnp.arange(3, dtype=jnp.int32)),
        st.just(jnp.array([True, False])),
    )
    node = st.recursive(
        leaf,
        lambda children: st.one_of(
            st.lists(children, min_size=1, max_size=2),
            st.dictionaries(st.sampled_from(["kernel", "bias", "Dense_0", "scale", "x"]), children,
                            min_size=1, max_size=2),
        ),
        max_leaves=4,
    )
    tree = draw(st.dictionaries(st.sampled_from(["params", "layer", "w"]), node, min_size=1, max_size=2))
    if draw(st.booleans()):
        tree["nothing"] = None
    return tree


exponents = st.one_of(
    st.sampled_from([1e-3, 0.5, 0.9999, 1.0, 1.0001, 1.5, 2.0, 3.0, 4.0]),
    st.floats(0.0, 4.0, exclude_min=True),
)
strengths = st.one_of(st.sampled_from([0.0, 1e-8, 1e-3, 1.0, 10.0]), st.floats(0.0, 10.0))


# ---------------------------------------------------------------------------------------------
# The table of transforms. A gradient-form regularizer adds a term "pointing with the weight".
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GradientCase:
    """A transform that adds a regularizer's gradient: ``updates + term(w)``."""

    name: str
    make: Callable[[float, float], optax.GradientTransformation]  # (λ, q) -> transform
    term: Callable[[np.ndarray, float, float], np.ndarray]  # float64 closed form of the added term
    bounded: Callable[[float], bool]  # q -> whether the added term is bounded (no inf ever)


def lq_term(w: np.ndarray, lam: float, q: float) -> np.ndarray:
    magnitude = np.abs(w)
    if q < 1:
        magnitude = np.maximum(magnitude, EPS)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        power = np.where(magnitude == 0, 0.0, magnitude ** (q - 1))
        return np.where(lam == 0, 0.0, lam * np.sign(w) * power)


def elastic_term(w: np.ndarray, lam: float, q: float) -> np.ndarray:
    del q
    with np.errstate(over="ignore"):
        return lam * np.sign(w) + (lam / 2) * w


GRADIENT_CASES = [
    GradientCase("add_decayed_weights_q", lambda lam, q: optreg.add_decayed_weights_q(lam, q), lq_term,
                 lambda q: q <= 1),
    GradientCase("add_elastic_net", lambda lam, q: optreg.add_elastic_net(lam, lam / 2), elastic_term,
                 lambda q: False),
    GradientCase("per_layer_decay", lambda lam, q: optreg.per_layer_decay(lambda path, leaf: lam, q=q, mask=None),
                 lq_term, lambda q: q <= 1),
    GradientCase("per_layer_decay(regex)",
                 lambda lam, q: optreg.per_layer_decay({".*": lam}, q=q, mask=None), lq_term, lambda q: q <= 1),
]


def float_pairs(params: Any, updates: Any, out: Any):
    """(w, u, out) leaf triples of the floating leaves; asserts structure, shape and dtype are kept
    and that int/bool leaves pass through unchanged."""
    assert jax.tree.structure(out) == jax.tree.structure(params)
    triples = []
    for w, u, o in zip(*(jax.tree.leaves(t) for t in (params, updates, out)), strict=True):
        assert o.shape == w.shape and o.dtype == w.dtype, (o.shape, o.dtype, w.shape, w.dtype)
        if jnp.issubdtype(w.dtype, jnp.floating):
            triples.append((w, u, o))
        else:
            assert o is u or np.array_equal(np.asarray(o), np.asarray(u))
    return triples


def f64(x: jax.Array) -> np.ndarray:
    return np.asarray(x.astype(jnp.float32) if x.dtype in (jnp.bfloat16, jnp.float16) else x, np.float64)


def lam_as_used(lam: float, dtype: str) -> float:
    """λ as optreg sees it: a float32 scalar unless x64 is on (float64)."""
    return float(np.float64(lam)) if dtype == "float64" else float(np.float32(lam))


def is_subnormal_in_compute_dtype(lam: float, dtype: str) -> bool:
    """λ that CPUs may flush to zero (the math runs in float32, or float64 for float64 leaves)."""
    return 0 < lam < float(jnp.finfo(jnp.float64 if dtype == "float64" else jnp.float32).tiny)


@settings(SETTINGS, max_examples=100)
@given(data=st.data(), dtype=st.sampled_from(DTYPES), case=st.sampled_from(GRADIENT_CASES), q=exponents,
       lam=strengths)
def test_gradient_form_on_hostile_trees(data, dtype, case, q, lam):
    with x64_context(dtype):
        params = data.draw(hostile_trees(dtype), label="params")
        updates = jax.tree.map(
            lambda w: data.draw(float_arrays(dtype, w.shape)) if jnp.issubdtype(w.dtype, jnp.floating) else w,
            params)
        zeros = jax.tree.map(jnp.zeros_like, params)
        tx = case.make(lam, q)
        state = tx.init(params)
        term_tree, _ = tx.update(zeros, state, params)
        out_tree, new_state = tx.update(updates, state, params)
        assert int(new_state.count) == 1
    big = float(finfo(dtype).max)
    for (w, _, term), (_, u, out) in zip(float_pairs(params, zeros, term_tree), float_pairs(params, updates, out_tree),
                                         strict=True):
        w64, t64, u64, o64 = f64(w), f64(term), f64(u), f64(out)
        context = f"{case.name} {dtype} q={q} λ={lam}\nw={w64}\nterm={t64}\nu={u64}\nout={o64}"
        # the added term: never NaN; never inf when bounded (q <= 1); 0 where w == 0; never against w
        assert not np.isnan(t64).any(), context
        if case.bounded(q):
            assert np.isfinite(t64).all(), context
        assert np.all(t64[w64 == 0] == 0), context
        assert np.all(np.sign(t64) * np.sign(w64) >= 0), context
        # where the true value fits comfortably, it is finite and matches the closed form
        expected = case.term(w64, lam_as_used(lam, dtype), q)
        if case.bounded(q):
            expected = np.clip(expected, -big, big)
        fits = np.abs(expected) <= big / 2
        assert np.isfinite(t64[fits]).all(), context
        tiny = float(finfo(dtype).tiny)  # compare only normal numbers: CPUs may flush subnormals to zero
        normal = fits & (np.abs(w64) >= tiny) & (np.abs(expected) >= 4 * tiny)
        normal &= not is_subnormal_in_compute_dtype(lam, dtype)
        # |w|^(q-1) may underflow in the compute dtype before λ scales it back up
        underflow = 4 * max(lam, 1.0) * float(jnp.finfo(jnp.float64 if dtype == "float64" else jnp.float32).tiny)
        np.testing.assert_allclose(t64[normal], expected[normal], rtol=RTOL[dtype], atol=underflow, err_msg=context)
        # updates + term: never NaN; inf only where the exact sum leaves the dtype's range;
        # rounding is monotone, so the result never moves against the term's sign
        assert not np.isnan(o64).any(), context
        with np.errstate(invalid="ignore", over="ignore"):
            exact = u64 + t64
            sum_fits = np.isfinite(exact) & (np.abs(exact) <= big / 2)
            assert np.isfinite(o64[sum_fits]).all(), context
            finite = np.isfinite(o64)
            assert np.all(np.sign(o64 - u64)[finite] * np.sign(t64)[finite] >= 0), context


# ---------------------------------------------------------------------------------------------
# Proximal operators and projections.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ProxCase:
    """Maps a pytree x to z = prox(x) (each floating leaf); ``apply(tree, s, q)`` with s = step·λ >= 0."""

    name: str
    apply: Callable[[Any, float, float], Any]
    min_q: float = 0.0  # the smallest q the operator takes (q is raised to it)


@dataclasses.dataclass(frozen=True)
class ProjectionCase:
    """Maps a pytree to a point of the ball {‖w‖_q <= radius}; ``apply(tree, radius, q)``."""

    name: str
    apply: Callable[[Any, float, float], Any]


def on_floating_leaves(function: Callable[[jax.Array], jax.Array], tree: Any) -> Any:
    return jax.tree.map(lambda x: function(x) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def applied_with_zero_updates(tx: optax.GradientTransformation, tree: Any) -> Any:
    """params + update(0): what a transform that replaces the step w + u by P(w + u) does to w."""
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, tree), tx.init(tree), tree)
    return optax.apply_updates(tree, updates)


def prox_cases() -> list[ProxCase]:
    prox, proximal_lq, proximal_elastic_net = optreg.prox, optreg.proximal_lq, optreg.proximal_elastic_net
    return [
        ProxCase("prox_lq", lambda t, s, q: on_floating_leaves(lambda x: prox.prox_lq(x, s, q), t)),
        ProxCase("tree_prox_lq", lambda t, s, q: prox.tree_prox_lq(t, s, q)),
        ProxCase("prox_elastic_net",
                 lambda t, s, q: on_floating_leaves(lambda x: prox.prox_elastic_net(x, s, s / 2), t)),
        # each leaf one group; empty leaves are left out here: see test_prox_group_lasso_takes_empty_leaves
        ProxCase("prox_group_lasso", lambda t, s, q: jax.tree.map(
            lambda x: prox.prox_group_lasso(x, s) if x.size and jnp.issubdtype(x.dtype, jnp.floating) else x, t)),
        ProxCase("proximal_lq", lambda t, s, q: applied_with_zero_updates(proximal_lq(1.0, s, q), t)),
        ProxCase("proximal_elastic_net",
                 lambda t, s, q: applied_with_zero_updates(proximal_elastic_net(1.0, s, s / 2), t)),
    ]


def projection_cases() -> list[ProjectionCase]:
    projection_lq_ball, project_lq_ball = optreg.projections.projection_lq_ball, optreg.project_lq_ball
    return [
        ProjectionCase("projection_lq_ball", lambda t, r, q: projection_lq_ball(t, r, q)),
        ProjectionCase("project_lq_ball", lambda t, r, q: applied_with_zero_updates(project_lq_ball(r, q), t)),
        ProjectionCase("project_lq_ball(per_leaf)", lambda t, r, q: applied_with_zero_updates(
            project_lq_ball(r, q, per_leaf=True), {"only": t})["only"]),
    ]


PROX_CASES = prox_cases()
# q is static in the proximal operators (one compilation per value): the closed forms, and Newton's path
# for q < 1 and q > 1.
PROX_EXPONENTS = [0.0, 0.3, 0.5, 2 / 3, 1.0, 1.5, 2.0, 3.0, 3.7]
PROJECTION_CASES = projection_cases()


@settings(SETTINGS, max_examples=60)
@given(data=st.data(), dtype=st.sampled_from(DTYPES), q=st.sampled_from(PROX_EXPONENTS), s=strengths)
def test_prox_never_grows_and_never_flips_a_sign(data, dtype, q, s):
    case = data.draw(st.sampled_from(PROX_CASES), label="case")
    with x64_context(dtype):
        params = data.draw(hostile_trees(dtype), label="params")
        result = case.apply(params, s, max(q, case.min_q))
    for w, _, z in float_pairs(params, params, result):
        w64, z64 = f64(w), f64(z)
        context = f"{case.name} {dtype} q={q} s={s}\nx={w64}\nprox={z64}"
        assert np.isfinite(z64).all(), context
        assert np.all(np.abs(z64) <= np.abs(w64)), context
        assert np.all(np.sign(z64) * np.sign(w64) >= 0), context


def test_prox_group_lasso_takes_empty_leaves():
    out = optreg.prox.prox_group_lasso({"empty": jnp.zeros((0, 3)), "w": jnp.ones(2)}, 0.1)
    assert out["empty"].shape == (0, 3)


def q_norm(leaves: list[np.ndarray], q: float) -> float:
    """‖leaves‖_q in float64, scaled by the largest entry so that 1e38**4 cannot overflow."""
    flat = np.concatenate([np.abs(leaf).ravel() for leaf in leaves] + [np.zeros(1)])
    largest = float(flat.max())
    if largest == 0 or q == np.inf:
        return largest
    return largest * float(np.sum((flat / largest) ** q)) ** (1 / q)


BALL_EXPONENTS = [1.0, 1.5, 2.0, 2.5, 3.0, 4.0, np.inf]


def check_projection(case: ProjectionCase, dtype: str, tree: Any, radius: float, q: float) -> None:
    """The result is finite, inside the ball, and a point already inside stays where it is."""
    with x64_context(dtype):
        projected = case.apply(tree, radius, q)
    assert int(projected["step"]) == 3
    pairs = float_pairs(tree, tree, projected)
    before = [f64(w) for w, _, _ in pairs]
    after = [f64(z) for _, _, z in pairs]
    context = f"{case.name} {dtype} q={q} radius={radius}\nbefore={before}\nafter={after}"
    assert all(np.isfinite(leaf).all() for leaf in after), context
    # one rounding to the dtype (half an ulp per entry) plus O(n) roundings of the float32/float64 math
    compute_eps = float(jnp.finfo(jnp.float64 if dtype == "float64" else jnp.float32).eps)
    slack = 1 + 2 * float(finfo(dtype).eps) + 64 * compute_eps
    per_leaf = "per_leaf" in case.name
    # a transform returns u' = P(w) − w and params + u' rounds once more, relative to |w| (triangle inequality)
    update_rounding = float(finfo(dtype).eps) if case.name.startswith("project_lq_ball") else 0.0
    groups = [([w], [z]) for w, z in zip(before, after, strict=True)] if per_leaf else [(before, after)]
    for group_before, group_after in groups:
        assert q_norm(group_after, q) <= radius * slack + update_rounding * q_norm(group_before, q), context
    if not per_leaf and q_norm(before, q) * slack <= radius:
        # entries below sqrt(tiny) may be lost: their squares underflow in optax's l2 norm
        lost = float(jnp.finfo(jnp.float64 if dtype == "float64" else jnp.float32).tiny) ** 0.5
        for w, z in zip(before, after, strict=True):
            np.testing.assert_allclose(z, w, rtol=4 * float(finfo(dtype).eps), atol=lost, err_msg=context)


@settings(SETTINGS, max_examples=50)
@given(data=st.data(), dtype=st.sampled_from(DTYPES), q=st.sampled_from(BALL_EXPONENTS),
       radius=st.one_of(st.sampled_from([0.0, 1e-2, 1.0, 1e3]), st.floats(1e-2, 1e3)))
def test_projection_lands_inside_the_ball(data, dtype, q, radius):
    """Weights and radii of ordinary size (|w| <= 100, with 0, ±tiny and subnormals)."""
    case = data.draw(st.sampled_from(PROJECTION_CASES), label="case")
    ordinary = st.one_of(st.sampled_from([v for v in special_values(dtype) if abs(v) <= 100]),
                         st.floats(-100, 100, allow_nan=False))

    def leaf(shapes: list[tuple]) -> Any:
        values = st.sampled_from(shapes).flatmap(lambda shape: hnp.arrays(np.float64, shape, elements=ordinary))
        return to_dtype(data.draw(values), dtype)

    with x64_context(dtype):
        # no empty leaves here (q = 1 fails on them, see the hostile test below); few shapes, because
        # every (structure, q) compiles the projection once
        tree = {"a": leaf([(), (5,)]), "b": [leaf([(2, 3)])],
                "step": jnp.asarray(3, jnp.int32)}
    check_projection(case, dtype, tree, radius, q)


PROJECTION_BUGS = [  # (q, radius, leaves as float32): regressions, each once a bug with the symptom named
    pytest.param(2.0, 1e30, [[0.0, 1.0]], id="q2-radius-1e30-collapses-to-0(optax-scale**2-overflow)"),
    pytest.param(1.0, 1e-6, [[3.4028237e6] * 3], id="q1-lands-outside(l1-norm-0.79)"),
    pytest.param(1.0, 1.0, [[1e8]], id="q1-Michelot-start-rounds-to-max|w|-returned-unprojected"),
    pytest.param(1.5, 1e-6, [[3.4028237e32]], id="q1.5-w/radius-overflows-NaN"),
    pytest.param(3.0, 1.0, [[3.4e38, -3.4e38]], id="q3-norm-overflows-returned-unprojected"),
]


@pytest.mark.parametrize("q, radius, leaves", PROJECTION_BUGS)
def test_projection_known_bugs(q, radius, leaves):
    tree = {"a": jnp.asarray(leaves[0], jnp.float32), "b": [], "step": jnp.asarray(3, jnp.int32)}
    check_projection(PROJECTION_CASES[0], "float32", tree, radius, q)


@settings(SETTINGS, phases=[Phase.explicit, Phase.generate])  # no shrinking: only the first failure matters
@given(data=st.data(), dtype=st.sampled_from(DTYPES), q=st.sampled_from(BALL_EXPONENTS),
       radius=st.one_of(st.sampled_from([0.0, 1e-6, 1.0, 1e30]), st.floats(0.0, 1e3)))
def test_projection_lands_inside_the_ball_for_hostile_weights(data, dtype, q, radius):
    case = data.draw(st.sampled_from(PROJECTION_CASES), label="case")
    with x64_context(dtype):
        tree = {"a": data.draw(float_arrays(dtype), label="a"), "b": [data.draw(float_arrays(dtype), label="b")],
                "step": jnp.asarray(3, jnp.int32)}
    check_projection(case, dtype, tree, radius, q)


# ---------------------------------------------------------------------------------------------
# Soft weight sharing under hostile weights, for hundreds of steps.
# ---------------------------------------------------------------------------------------------


def hostile_weight_sets() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    small = rng.normal(0.0, 0.05, 256)
    outlier = small.copy()
    outlier[17] = 1e6
    return {
        "all zeros": np.zeros(256),
        "all huge": 1e30 * rng.choice([-1.0, 1.0], 256),
        "one outlier": outlier,
        "constant": np.full(256, 0.3),
        "subnormal": np.full(256, 1e-40) * rng.choice([-1.0, 1.0], 256),
    }


SOFT_SHARE_STEPS = 300
_SOFT_SHARE_TRAINER: list[Any] = []


def soft_share_trainer(soft_share: Callable[..., optax.GradientTransformation]) -> tuple[Any, Callable]:
    """One transform and one compiled 300-step scan (the mixture learns, the hostile weights stay)."""
    if not _SOFT_SHARE_TRAINER:
        tx = soft_share(1e-3, 5)

        @jax.jit
        def train(state: Any, weights: jax.Array) -> Any:
            def one(state: Any, _: Any) -> Any:
                updates, state = tx.update({"w": jnp.zeros_like(weights)}, state, {"w": weights})
                return state, (updates["w"], state.log_precisions)

            return jax.lax.scan(one, state, None, length=SOFT_SHARE_STEPS)

        _SOFT_SHARE_TRAINER.extend([tx, train])
    return _SOFT_SHARE_TRAINER[0], _SOFT_SHARE_TRAINER[1]


@pytest.mark.parametrize("name", list(hostile_weight_sets()))
def test_soft_sharing_stays_finite_and_precisions_stay_bounded_under_hostile_weights(name):
    soft_share = optreg.soft_share_prior
    LOG_PRECISION_BOUNDS = (-20.0, 20.0)  # noqa: N806 - the documented guard on log λ_j
    DEFAULT_PRECISION_PRIOR, DEFAULT_ZERO_PRECISION_PRIOR = (250.0, 0.1), (5000.0, 2.0)  # noqa: N806 - Ullrich et al.

    weights = jnp.asarray(hostile_weight_sets()[name], jnp.float32)
    tx, train = soft_share_trainer(soft_share)
    initial = tx.init({"w": weights})
    final, (updates, log_precisions) = train(initial, weights)
    for leaf in jax.tree.leaves(final):
        assert np.isfinite(np.asarray(leaf, np.float64)).all(), (name, final)
    assert np.isfinite(np.asarray(updates)).all(), name
    # The Gamma(α, β) hyperprior caps each precision at the posterior mode with every weight in the
    # component, λ* = (N/2 + α − 1)/β (Ullrich et al.'s form (1 − α)·log λ + β·λ): variances never collapse.
    # Adam may overshoot while approaching it, so allow a factor e^0.5 (and never below the start).
    cap = np.array([(weights.size / 2 + alpha - 1) / beta
                    for alpha, beta in [DEFAULT_ZERO_PRECISION_PRIOR] + [DEFAULT_PRECISION_PRIOR] * 4])
    start = np.asarray(initial.log_precisions, np.float64)
    history = np.asarray(log_precisions, np.float64)
    assert np.all(history <= np.maximum(start, np.log(cap)) + 0.5), (name, history.max(axis=0), np.log(cap))
    assert np.all(history >= LOG_PRECISION_BOUNDS[0]) and np.all(history <= LOG_PRECISION_BOUNDS[1])
    assert int(final.count) == SOFT_SHARE_STEPS


# ---------------------------------------------------------------------------------------------
# Regressions found by the properties above.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("q", [1.0, 2.0])
def test_half_precision_small_lambda_is_not_rounded_to_zero(q):
    # λ = 1e-8 is 0 in float16; the q = 1 and q = 2 paths used to multiply in the leaf's dtype.
    values = np.array([60000.0, -30000.0])
    w = jnp.asarray(values, jnp.float16)
    lam = 1e-8 if q == 2.0 else 1e-4
    tx = optreg.add_decayed_weights_q(lam, q)
    term, _ = tx.update(jnp.zeros_like(w), tx.init(w), w)
    expected = lam * np.sign(values) * np.abs(values) ** (q - 1)
    np.testing.assert_allclose(np.asarray(term, np.float64), expected, rtol=2e-3)


def test_python_float_leaves_are_regularized():
    # A Python float is a valid pytree leaf (optax handles it); it used to raise AttributeError.
    params = {"a": 2.0, "b": jnp.ones(2)}
    cases = [(optreg.add_decayed_weights_q(0.5, 2.0), 1.0), (optreg.add_elastic_net(0.5, 0.0), 0.5),
             (optreg.per_layer_decay({"a": 0.5, "b": 0.5}, mask=None), 1.0)]
    for tx, expected in cases:
        out, _ = tx.update({"a": 0.0, "b": jnp.zeros(2)}, tx.init(params), params)
        assert float(out["a"]) == expected
    assert float(optreg.lq_penalty(params, 1.0, 2.0)) == pytest.approx(0.5 * 4.0 + 0.5 * 2.0)


@pytest.mark.parametrize("q", [2.5, 3.0, 4.0])
def test_no_overflow_where_the_true_decay_fits(q):
    # |w|^(q-1) overflowed float32 before λ scaled it back: bf16 w = 1.8e19, q = 3, λ = 1e-8 gave inf, true 3.4e30.
    w = jnp.asarray([1.8446744e19, -1e15, 2.0], jnp.bfloat16)
    lam = 1e-30  # the true values are 0.079 ... 6.3e27: all finite in bfloat16
    term = optreg.lq_gradient(w, lam, q)
    w64 = f64(w)
    expected = lam * np.sign(w64) * np.abs(w64) ** (q - 1)
    np.testing.assert_allclose(np.asarray(term.astype(jnp.float32), np.float64), expected, rtol=RTOL["bfloat16"])
