"""soft_share_prior / soft_share_penalty: the learned mixture prior (Nowlan & Hinton 1992; Ullrich et al. 2017)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree
from scipy.stats import norm

import optreg
from optreg import MixturePrior, MixtureState
from optreg._soft_share_grid import exact_pair, fast_pair

K = 17
#: The mixture's optimizer that learns only the log-precisions (Adam, step 0.05).
ONLY_LOG_PRECISIONS = optax.multi_transform({"adam": optax.adam(0.05), "frozen": optax.set_to_zero()},
                                            optreg.MixtureParams("frozen", "adam", "frozen"))


def weights_tree(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "Dense_0": {"kernel": jnp.asarray(0.1 * rng.standard_normal((40, 30)), jnp.float32),
                    "bias": jnp.asarray(0.01 * rng.standard_normal(30), jnp.float32)},
        "Dense_1": {"kernel": jnp.asarray(0.2 * rng.standard_normal((30, 10)), jnp.float32),
                    "bias": jnp.zeros(10, jnp.float32)},
    }


def trained_like_state(tx: optax.GradientTransformation, params: dict) -> MixtureState:
    """A sharp mixture like one after retraining: σ ≈ 0.02, means spread over [-0.5, 0.5], π_0 = 0.9."""
    state = tx.init(params)
    means = jnp.concatenate([jnp.zeros(1), jnp.linspace(-0.5, 0.5, K - 1)]).astype(jnp.float32)
    log_precisions = jnp.full(K, np.log(2500.0), jnp.float32).at[3].set(np.log(400.0))
    logits = jnp.log(jnp.concatenate([jnp.array([0.9]), jnp.full(K - 1, 0.1 / (K - 1))])).astype(jnp.float32)
    return state._replace(means=means, log_precisions=log_precisions, mixing_logits=logits)


def numpy_weight_gradient(w: np.ndarray, state: MixtureState) -> np.ndarray:
    """Σ_j r_j λ_j (w − μ_j) in float64 with scipy's normal pdf (independent of optreg's code)."""
    means = np.asarray(state.means, np.float64)
    precisions = np.exp(np.asarray(state.log_precisions, np.float64))
    logits = np.asarray(state.mixing_logits, np.float64)
    pi = np.exp(logits - logits.max())
    pi /= pi.sum()
    w = np.asarray(w, np.float64)[..., None]
    log_joint = np.log(pi) + norm.logpdf(w, means, 1.0 / np.sqrt(precisions))
    r = np.exp(log_joint - log_joint.max(-1, keepdims=True))
    r /= r.sum(-1, keepdims=True)
    return np.sum(r * precisions * (w - means), -1)


def zeros_like(tree):
    return jax.tree.map(jnp.zeros_like, tree)


# One transform per mode and one jitted update each, shared by the tests (compiling is the slow part).
STRENGTH = 1e-2
MASK = {"Dense_0": {"kernel": True, "bias": False}, "Dense_1": {"kernel": True, "bias": False}}
TX = {mode: optreg.soft_share_prior(STRENGTH, K, mode=mode, mask=MASK) for mode in ("exact", "fast")}
UPDATE = {mode: jax.jit(tx.update) for mode, tx in TX.items()}
PENALTY_GRAD = jax.jit(jax.grad(lambda p, s: optreg.soft_share_penalty(p, STRENGTH, s)))  # the state's mask


# ----------------------------------------------------------------------------- the weight gradient


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_transform_equals_grad_of_penalty(mode):
    params = weights_tree()
    for state in (TX[mode].init(params), trained_like_state(TX[mode], params)):
        grads = weights_tree(1)
        updates, _ = UPDATE[mode](grads, state, params)
        penalty_grad = PENALTY_GRAD(params, state)
        for layer in ("Dense_0", "Dense_1"):
            added = updates[layer]["kernel"] - grads[layer]["kernel"]
            reference = penalty_grad[layer]["kernel"]
            scale = float(jnp.max(jnp.abs(reference)))
            np.testing.assert_allclose(added, reference, atol=1e-4 * scale + 1e-7)
            np.testing.assert_array_equal(updates[layer]["bias"], grads[layer]["bias"])
            np.testing.assert_array_equal(penalty_grad[layer]["bias"], 0.0)


def test_exact_gradient_matches_scipy_closed_form():
    params = weights_tree()
    state = trained_like_state(TX["exact"], params)
    updates, _ = UPDATE["exact"](zeros_like(params), state, params)
    for layer in ("Dense_0", "Dense_1"):
        reference = STRENGTH * numpy_weight_gradient(params[layer]["kernel"], state)
        np.testing.assert_allclose(updates[layer]["kernel"], reference, rtol=2e-4, atol=1e-5)


def test_fast_mode_within_1e4_of_exact_on_a_sharp_mixture():
    rng = np.random.default_rng(3)
    # weights clustered at the means (as after retraining) plus a uniform spread
    means = np.linspace(-0.5, 0.5, K - 1)
    clustered = rng.choice(means, 20000) + 0.02 * rng.standard_normal(20000)
    params = {"a": jnp.asarray(np.concatenate([clustered, rng.uniform(-0.6, 0.6, 20000)]), jnp.float32),
              "b": jnp.asarray(0.01 * rng.standard_normal((100, 50)), jnp.float32)}
    fast = optreg.soft_share_prior(1.0, K, mode="fast")
    state = trained_like_state(fast, params)
    exact = optreg.soft_share_prior(1.0, K, mode="exact")
    fast_updates, fast_state = jax.jit(fast.update)(zeros_like(params), state, params)
    exact_updates, exact_state = jax.jit(exact.update)(zeros_like(params), state, params)
    scale = max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree.leaves(exact_updates))
    for f, e in zip(jax.tree.leaves(fast_updates), jax.tree.leaves(exact_updates)):
        assert float(jnp.max(jnp.abs(f - e))) <= 1e-4 * scale
    # the histogram-based mixture step moves every parameter the same way as the exact one
    for f, e in zip(jax.tree.leaves(fast_state[1:4]), jax.tree.leaves(exact_state[1:4])):
        np.testing.assert_allclose(f, e, atol=1e-6)


def test_table_kept_between_refreshes_is_the_current_mixtures():
    """With refresh_every=4 the table is rebuilt only on refreshes (or for an edited state); in between the
    weights move, and the added gradient is still the exact one of the state's mixture on the grid."""
    rng = np.random.default_rng(11)
    params = {"w": jnp.asarray(rng.uniform(-0.5, 0.5, (50, 40)), jnp.float32)}
    tx = optreg.soft_share_prior(1.0, K, refresh_every=4)
    state = trained_like_state(tx, params)  # edited by hand: its cached table is stale
    step = jax.jit(tx.update)
    for k in range(6):
        moved = {"w": params["w"] * (1.0 + 0.01 * k)}  # the last ones leave the grid built at the refresh
        added, new_state = step(zeros_like(moved), state, moved)
        exact = numpy_weight_gradient(moved["w"], state)
        inside = np.abs(np.asarray(moved["w"])) <= 0.5 * 1.05
        scale = np.max(np.abs(exact))
        np.testing.assert_allclose(np.asarray(added["w"])[inside], exact[inside], atol=1e-4 * scale)
        assert np.all(np.isfinite(np.asarray(added["w"])))
        np.testing.assert_allclose(np.asarray(added["w"])[~inside], exact[~inside], rtol=0.05, atol=1e-3 * scale)
        changed = not np.array_equal(np.asarray(new_state.means), np.asarray(state.means))
        assert changed == (k % 4 == 0), k  # the mixture steps on refreshes only
        state = new_state


@pytest.mark.parametrize("backend, every", [("gpu", 1), ("cpu", 16), ("tpu", 16)])
def test_default_refresh_follows_the_backend(monkeypatch, backend, every):
    """refresh_every=None is k = 1 on a GPU (where XLA's conditional costs more than a refresh), 16 elsewhere;
    resolved at the first init, not at construction, and with the default mixture optimizer's step sizes times k."""
    params = weights_tree(3)
    tx = optreg.soft_share_prior(1e-3, 5)  # built before the backend is known
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    state = tx.init(params)
    explicit = optreg.soft_share_prior(1e-3, 5, refresh_every=every)
    chex.assert_trees_all_equal_structs(state, explicit.init(params))
    assert (state.cache is None) == (every == 1)
    grads = jax.tree.map(lambda w: 0.1 * w, params)
    explicit_state = explicit.init(params)
    for _ in range(3):  # the mixture steps with the same Adam step sizes (x k) at the same updates
        updates, state = tx.update(grads, state, params)
        explicit_updates, explicit_state = explicit.update(grads, explicit_state, params)
        chex.assert_trees_all_close((updates, state), (explicit_updates, explicit_state), rtol=1e-6, atol=1e-7)


def test_fast_path_forms_no_n_by_k_array():
    n = 5003
    params = {"w": jnp.linspace(-1.0, 1.0, n)}
    tx = optreg.soft_share_prior(1.0, K, mode="fast", grid_size=1024)
    state = tx.init(params)
    jaxpr = jax.make_jaxpr(tx.update)(params, state, params)

    def shapes(jaxpr):
        for equation in jaxpr.eqns:
            for var in equation.outvars:
                yield tuple(getattr(var.aval, "shape", ()))
            for sub in jax.core.subjaxprs(equation) if hasattr(jax.core, "subjaxprs") else ():
                yield from shapes(sub)

    assert not [shape for shape in shapes(jaxpr.jaxpr) if n in shape and K in shape]
    exact_jaxpr = jax.make_jaxpr(optreg.soft_share_prior(1.0, K, mode="exact").update)(params, state, params)
    assert [shape for shape in shapes(exact_jaxpr.jaxpr) if n in shape and K in shape]  # the check can fail


def test_fixed_responsibility_equal_precision_penalty_is_the_special_case():
    """λ·Σ_i Σ_j γ_ij (w_i − μ_j)² with γ = r held fixed and all λ_j = λ_p has the gradient τ·Σ_j r_ij λ_p (w_i − μ_j)
    when τ·λ_p = 2λ (Nowlan & Hinton 1992's soft assignments)."""
    params = weights_tree()
    tx = optreg.soft_share_prior(1.0, K, mode="exact")
    state = tx.init(params)
    lambda_p, lam = 50.0, 0.3
    tau = 2 * lam / lambda_p
    state = state._replace(log_precisions=jnp.full(K, np.log(lambda_p), jnp.float32))
    tx = optreg.soft_share_prior(tau, K, mode="exact")
    updates, _ = jax.jit(tx.update)(zeros_like(params), state, params)

    def soft_assignment_penalty(p):
        total = 0.0
        for w in jax.tree.leaves(p):
            gamma = jax.lax.stop_gradient(optreg.responsibilities(w, state))
            total = total + jnp.sum(gamma * (w[..., None] - state.means) ** 2)
        return lam * total

    chex.assert_trees_all_close(updates, jax.jit(jax.grad(soft_assignment_penalty))(params), atol=1e-6, rtol=1e-5)


def test_exact_and_fast_paths_return_the_same_pair():
    """Both paths give (weight gradients, gradient of Σ −log p w.r.t. μ, log λ, log π); checked against autodiff."""
    rng = np.random.default_rng(5)
    means = np.linspace(-0.5, 0.5, K - 1)
    weights = [jnp.asarray(rng.choice(means, (60, 50)) + 0.02 * rng.standard_normal((60, 50)), jnp.float32),
               jnp.asarray(rng.uniform(-0.6, 0.6, 700), jnp.float32)]
    state = trained_like_state(TX["exact"], weights_tree())
    mixture = optreg.MixtureParams(state.means, state.log_precisions, state.mixing_logits)
    log_mixing = jax.nn.log_softmax(state.mixing_logits)
    exact = jax.jit(lambda w: exact_pair(w, mixture, log_mixing, log_mixing))(weights)
    fast = jax.jit(lambda w: fast_pair(w, mixture, log_mixing, log_mixing, 4096))(weights)
    for e, f in zip(exact[0], fast[0]):
        assert float(jnp.max(jnp.abs(e - f))) <= 1e-4 * float(jnp.max(jnp.abs(e)))
    for field in range(3):
        np.testing.assert_allclose(fast[1][field], exact[1][field], rtol=2e-3, atol=2e-3 * float(
            jnp.max(jnp.abs(exact[1][field]))))

    def total(m, lm):  # Σ_i −log p(w_i) with log π as a free variable
        return sum(jnp.sum(-jax.nn.logsumexp(
            lm + 0.5 * (m[1] - np.log(2 * np.pi)) - 0.5 * jnp.exp(m[1]) * (w[..., None] - m[0]) ** 2, -1))
            for w in weights)

    autodiff = jax.grad(total, argnums=(0, 1))((mixture.means, mixture.log_precisions), log_mixing)
    np.testing.assert_allclose(exact[1].means, autodiff[0][0], rtol=1e-3, atol=1e-2)
    np.testing.assert_allclose(exact[1].log_precisions, autodiff[0][1], rtol=1e-3, atol=1e-2)
    np.testing.assert_allclose(exact[1].mixing_logits, autodiff[1], rtol=1e-3, atol=1e-2)


# ----------------------------------------------------------------------------- the mixture step


def test_first_mixture_step_descends_the_penalty_with_per_group_rates():
    params = weights_tree()
    rates = (1e-3, 2e-3, 5e-3)
    optimizer = optax.multi_transform(
        {name: optax.adam(rate) for name, rate in zip(optreg.MixtureParams._fields, rates)},
        optreg.MixtureParams(*optreg.MixtureParams._fields))
    prior = MixturePrior(zero_mixing=(50.0, 2.0))
    tx = optreg.soft_share_prior(1e-2, K, mode="exact", learn_zero_mixing=True, prior=prior, optimizer=optimizer)
    state = tx.init(params)
    _, new = jax.jit(tx.update)(zeros_like(params), state, params)
    grad = jax.jit(jax.grad(
        lambda m, lp, ml: optreg.soft_share_penalty(
            params, 1e-2, state._replace(means=m, log_precisions=lp, mixing_logits=ml), prior=prior)
        , argnums=(0, 1, 2)))(state.means, state.log_precisions, state.mixing_logits)
    # Adam's first step is −rate·sign(gradient) (up to its eps); μ_0 is pinned at 0
    expected_means = state.means - rates[0] * jnp.sign(grad[0])
    np.testing.assert_allclose(new.means[1:], expected_means[1:], atol=1e-6)
    assert float(new.means[0]) == 0.0
    np.testing.assert_allclose(new.log_precisions, state.log_precisions - rates[1] * jnp.sign(grad[1]), atol=1e-6)
    # logits are stored normalised (log π); compare the implied proportions
    stepped = state.mixing_logits - rates[2] * jnp.sign(grad[2])
    np.testing.assert_allclose(jax.nn.softmax(new.mixing_logits), jax.nn.softmax(stepped), rtol=1e-5)


def test_fixed_zero_mixing_stays_put_and_others_learn():
    params = weights_tree()
    tx = optreg.soft_share_prior(1e-2, K, zero_mixing=0.95)
    state = tx.init(params)
    step = jax.jit(tx.update)
    for _ in range(20):
        _, state = step(zeros_like(params), state, params)
    pi = optreg.mixing_proportions(state)
    np.testing.assert_allclose(pi[0], 0.95, rtol=1e-5)
    np.testing.assert_allclose(jnp.sum(pi), 1.0, rtol=1e-5)
    assert float(state.means[0]) == 0.0
    assert float(jnp.std(pi[1:])) > 0  # the rest moved apart from their equal start


def test_gamma_hyperprior_gives_the_map_precision_instead_of_collapse():
    """Weights sitting exactly on two well-separated means: without a prior the likelihood wants λ → ∞; with
    Gamma(α, β) the optimum of −(n/2)·log λ + (1 − α)·log λ + β·λ is λ* = (n/2 + α − 1)/β."""
    n = 400
    params = {"w": jnp.concatenate([jnp.zeros(n), jnp.full(n, 0.5)])}
    alpha, beta = 20.0, 0.05

    def run(prior):
        tx = optreg.soft_share_prior(1.0, 2, mode="exact", optimizer=ONLY_LOG_PRECISIONS, refresh_every=1,
                                     zero_mixing=0.5, init_range=(0.5, 0.5 + 1e-6), init_std=0.1,
                                     prior=MixturePrior(precision=prior, zero_precision=prior))
        state = tx.init(params)

        def body(state, _):
            return tx.update(zeros_like(params), state, params)[1], None

        return jax.lax.scan(body, state, None, length=800)[0]

    state = run((alpha, beta))
    np.testing.assert_allclose(state.log_precisions, np.log((n / 2 + alpha - 1) / beta), atol=0.1)
    collapsed = run(None)
    assert bool(jnp.all(collapsed.log_precisions > np.log((n / 2 + alpha - 1) / beta) + 2.0))
    assert bool(jnp.all(jnp.isfinite(collapsed.log_precisions)))


def test_statistics_are_global_over_the_tree():
    rng = np.random.default_rng(0)
    flat = jnp.asarray(0.1 * rng.standard_normal(3000), jnp.float32)
    split = {"a": flat[:1000].reshape(20, 50), "b": flat[1000:]}
    for mode in ("exact", "fast"):
        tx = optreg.soft_share_prior(1e-2, K, mode=mode)
        s_one, s_split = tx.init({"w": flat}), tx.init(split)
        chex.assert_trees_all_close(s_one[:5], s_split[:5])
        _, one = jax.jit(tx.update)({"w": flat}, s_one, {"w": flat})
        _, two = jax.jit(tx.update)(split, s_split, split)
        chex.assert_trees_all_close(one[:5], two[:5], atol=1e-6)


# ----------------------------------------------------------------------------- the transform contract


def test_weight_decay_schedule_is_evaluated_at_the_count():
    params = weights_tree()
    schedule = optax.linear_schedule(0.0, 1e-2, 4)
    tx = optreg.soft_share_prior(schedule, K, mode="exact")
    state = tx.init(params)
    step = jax.jit(tx.update)
    unit_step = jax.jit(optreg.soft_share_prior(1.0, K, mode="exact").update)
    for k in range(3):
        unit, _ = unit_step(zeros_like(params), state, params)  # the weight gradient at τ = 1
        updates, new_state = step(zeros_like(params), state, params)
        expected = jax.tree.map(lambda g: float(schedule(k)) * g, unit)
        chex.assert_trees_all_close(updates, expected, atol=1e-9, rtol=1e-5)
        state = new_state
    assert int(state.count) == 3


def test_jit_vmap_and_inject_hyperparams():
    params = {"w": jnp.linspace(-0.3, 0.5, 24).reshape(4, 6), "b": jnp.linspace(0.1, -0.2, 5)}
    tx = optreg.soft_share_prior(1e-2, K)
    state = tx.init(params)
    eager = jax.jit(tx.update)(params, state, params)  # (an eager run takes minutes on a loaded CPU)

    batch = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), params)
    vmapped, _ = jax.jit(jax.vmap(tx.update, in_axes=(0, None, 0)))(batch, state, batch)
    second, _ = jax.jit(tx.update)(jax.tree.map(lambda x: 2 * x, params), state, jax.tree.map(lambda x: 2 * x, params))
    chex.assert_trees_all_close(jax.tree.map(lambda x: x[1], vmapped), second, atol=1e-5)

    injected = optax.inject_hyperparams(optreg.soft_share_prior,
                                        static_args=("num_components", "grid_size", "refresh_every"))(
        weight_decay=1e-2, num_components=K)
    injected_state = injected.init(params)
    updates, injected_state = jax.jit(injected.update)(params, injected_state, params)
    chex.assert_trees_all_close(updates, eager[0], atol=1e-6)
    injected_state.hyperparams["weight_decay"] = jnp.asarray(0.0)
    updates, _ = jax.jit(injected.update)(params, injected_state, params)
    chex.assert_trees_all_close(updates, params)


@pytest.mark.parametrize("dtype, modes", [(jnp.bfloat16, ("exact", "fast")), (jnp.float16, ("fast",))])
def test_dtypes_and_shapes_kept(dtype, modes):
    params = jax.tree.map(lambda x: x.astype(dtype), weights_tree())
    for mode in modes:
        tx = optax.chain(optreg.soft_share_prior(1e-2, K, mode=mode), optax.sgd(0.1))
        state = tx.init(params)
        updates, state = jax.jit(tx.update)(params, state, params)
        chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)
        assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves((updates, state)))


@pytest.mark.parametrize(
    "mode, case",
    [("fast", "zeros"), ("fast", "huge"), ("fast", "constant"), ("fast", "mixed_scale"), ("exact", "zeros"),
     ("exact", "huge")],
)
def test_no_nan_for_hostile_weights(mode, case):
    weights = {
        "zeros": jnp.zeros((50, 20)),
        "huge": jnp.concatenate([jnp.full(10, 1e30), jnp.full(10, -3e38), 0.1 * jnp.arange(980.0)]),
        "constant": jnp.full((100,), 7.0),
        "mixed_scale": jnp.concatenate([jnp.linspace(-1e-8, 1e-8, 100), jnp.array([1e4])]),
    }[case]
    params = {"w": weights.astype(jnp.float32), "b": jnp.zeros(3, jnp.bfloat16)}
    tx = optreg.soft_share_prior(1e-2, K, mode=mode)
    state = tx.init(params)
    step = jax.jit(tx.update)
    for _ in range(3):
        updates, state = step(params, state, params)
        assert all(bool(jnp.all(~jnp.isnan(leaf))) for leaf in jax.tree.leaves(updates))
        assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(state))


def test_weights_off_the_grid_get_its_tangent_and_stay_finite():
    """Between refreshes the table is the last refresh's; a weight beyond its grid gets the tangent of g at
    the grid's end, in float64 from the closed form, and a finite value however far it went."""
    rng = np.random.default_rng(5)
    inside = rng.uniform(-0.5, 0.5, 400).astype(np.float32)
    inside[:2] = [-0.5, 0.5]
    tx = optreg.soft_share_prior(1.0, K, refresh_every=4)
    step = jax.jit(tx.update)
    _, state = step({"w": jnp.zeros(400)}, trained_like_state(tx, {"w": jnp.asarray(inside)}), {"w": inside})
    high, low = 0.5 + 0.05, -0.5 - 0.05  # the refresh's grid: the weights' range widened by 5 % on each side
    beyond = np.array([0.6, 0.8, 1.5, -0.62, -1.2], np.float64)
    far = np.array([1e4, -1e12, 1e30, -3e38, 3e38], np.float32)
    moved = np.concatenate([beyond, far, inside[: 400 - beyond.size - far.size]]).astype(np.float32)
    added, _ = step({"w": jnp.zeros(400)}, state, {"w": jnp.asarray(moved)})
    added = np.asarray(added["w"])
    assert np.all(np.isfinite(added))
    h = 1e-6
    for end in (low, high):
        side = beyond[(beyond > high) if end == high else (beyond < low)]
        slope = (numpy_weight_gradient(np.array([end + h]), state) - numpy_weight_gradient(np.array([end - h]), state))
        tangent = numpy_weight_gradient(np.array([end]), state) + slope / (2 * h) * (side - end)
        got = added[: beyond.size][np.isin(beyond, side)]
        np.testing.assert_allclose(got, tangent, rtol=1e-3)
    assert np.all(np.sign(added[beyond.size:beyond.size + far.size]) == np.sign(far))  # pulled back towards 0


@pytest.mark.parametrize("every", [1, 16])
@pytest.mark.parametrize("outlier", [1e3, 1e4, 1e30, 3e38, np.inf])
def test_one_far_weight_leaves_the_others_gradients_exact(outlier, every):
    """The grid reaches only 16 σ beyond the mixture's outermost means: a weight far beyond (or inf) no
    longer stretches it until the other weights share a cell (at 1e4 they were wrong by 90 %), and gets
    the tangent there, pointing back towards 0 (at 1e30 to 1e-3 of the closed form)."""
    w = np.random.default_rng(3).normal(0.0, 0.15, 1000).astype(np.float32)
    tx = optreg.soft_share_prior(1.0, K, refresh_every=every)
    state = trained_like_state(tx, {"w": jnp.asarray(w)})
    x = w.copy()
    x[7] = outlier
    added = np.asarray(jax.jit(tx.update)({"w": jnp.zeros(1000)}, state, {"w": jnp.asarray(x)})[0]["w"])
    others = np.delete(np.arange(1000), 7)
    expected = numpy_weight_gradient(w[others], state)
    np.testing.assert_allclose(added[others], expected, atol=1e-4 * np.max(np.abs(expected)))
    assert np.isfinite(added[7]) and added[7] > 0
    if outlier == 1e30:
        np.testing.assert_allclose(added[7], numpy_weight_gradient(np.array([1e30]), state)[0], rtol=1e-3)


@pytest.mark.parametrize("every", [1, 16])
def test_a_nan_weight_gets_nan_and_spoils_neither_the_others_nor_the_next_updates(every):
    """As in the exact mode: NaN in, NaN out for that weight only; the table and the mixture stay clean."""
    w = np.random.default_rng(4).normal(0.0, 0.15, 500).astype(np.float32)
    tx = optreg.soft_share_prior(1.0, K, refresh_every=every)
    state = trained_like_state(tx, {"w": jnp.asarray(w)})
    x = w.copy()
    x[11] = np.nan
    step = jax.jit(tx.update)
    added, state = step({"w": jnp.zeros(500)}, state, {"w": jnp.asarray(x)})
    assert np.isnan(added["w"][11]) and int(jnp.sum(jnp.isnan(added["w"]))) == 1
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(state))
    clean, _ = step({"w": jnp.zeros(500)}, state, {"w": jnp.asarray(w)})
    np.testing.assert_allclose(clean["w"], numpy_weight_gradient(w, state), atol=1e-4 * np.max(np.abs(clean["w"])))


def test_a_tree_of_empty_leaves_gets_a_finite_mixture():
    """No weight to take the range from: the initial means span [-1, 1] as without any selected leaf."""
    state = optreg.soft_share_prior(1e-3, 5).init({"e": jnp.zeros((0,), jnp.float32)})
    np.testing.assert_allclose(state.means, [0.0, -1.0, -1.0 / 3.0, 1.0 / 3.0, 1.0], rtol=1e-6)
    assert all(bool(jnp.all(jnp.isfinite(field))) for field in (state.log_precisions, state.mixing_logits))


@pytest.mark.parametrize("mode, every", [("fast", 1), ("fast", 4), ("exact", 1)])
def test_an_empty_leaf_is_skipped_not_an_error(mode, every):
    """A zero-size leaf (e.g. a layer with no units) among the selected ones: its update is empty, the
    others' are those of the tree without it."""
    weights = jnp.linspace(-0.5, 0.5, 40)
    with_empty = {"e": jnp.zeros((0, 3)), "w": weights}
    tx = optreg.soft_share_prior(1e-2, 5, mode=mode, refresh_every=every)
    updates, state = tx.update(with_empty, tx.init(with_empty), with_empty)
    alone, alone_state = tx.update({"w": weights}, tx.init({"w": weights}), {"w": weights})
    assert updates["e"].shape == (0, 3)
    chex.assert_trees_all_close((updates["w"], state.means), (alone["w"], alone_state.means), rtol=1e-6)


def test_orbax_round_trip_continues_identically(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    params = weights_tree()
    tx = optax.chain(optreg.soft_share_prior(1e-2, K), optax.adam(1e-2))
    state = tx.init(params)
    step = jax.jit(lambda p, s: (lambda u, s2: (optax.apply_updates(p, u), s2))(*tx.update(p, s, p)))
    for _ in range(3):
        params, state = step(params, state)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "ckpt", state)
        checkpointer.wait_until_finished()
        restored = checkpointer.restore(tmp_path / "ckpt", jax.tree.map(ocp.utils.to_shape_dtype_struct, state))
    assert isinstance(restored[0], MixtureState)
    a_params, a_state = params, state
    b_params, b_state = params, restored
    for _ in range(3):
        a_params, a_state = step(a_params, a_state)
        b_params, b_state = step(b_params, b_state)
    chex.assert_trees_all_equal(a_params, b_params)
    chex.assert_trees_all_equal(a_state, b_state)


def test_init_is_deterministic_and_follows_the_recipe():
    params = weights_tree()
    tx = optreg.soft_share_prior(1e-2, K, zero_mixing=0.99)
    state = tx.init(params)
    chex.assert_trees_all_equal(state, tx.init(params))
    leaves = jnp.concatenate([leaf.ravel() for leaf in jax.tree.leaves(params)])
    np.testing.assert_allclose(state.means[1:], np.linspace(float(leaves.min()), float(leaves.max()), K - 1),
                               rtol=1e-5, atol=1e-7)
    assert float(state.means[0]) == 0.0
    pi = optreg.mixing_proportions(state)
    np.testing.assert_allclose(pi[0], 0.99, rtol=1e-6)
    np.testing.assert_allclose(pi[1:], 0.01 / (K - 1), rtol=1e-4)
    for field in ("means", "log_precisions", "mixing_logits"):
        assert getattr(state, field).shape == (K,)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"weight_decay": 1.0, "num_components": 1}, ValueError),
        ({"weight_decay": 1.0, "num_components": 2.5}, TypeError),
        ({"weight_decay": None}, ValueError),
        ({"weight_decay": -1.0}, ValueError),
        ({"weight_decay": 1.0, "zero_mixing": 1.0}, ValueError),
        ({"weight_decay": 1.0, "mode": "approximate"}, ValueError),
        ({"weight_decay": 1.0, "prior": MixturePrior(precision=(0.5, 1.0))}, ValueError),
        ({"weight_decay": 1.0, "prior": (250.0, 0.1)}, TypeError),
        ({"weight_decay": 1.0, "optimizer": "adam"}, TypeError),
        ({"weight_decay": 1.0, "init_range": (1.0, -1.0)}, ValueError),
        ({"weight_decay": 1.0, "grid_size": 4}, ValueError),
        ({"weight_decay": 1.0, "grid_size": 2**31}, ValueError),
        ({"weight_decay": 1.0, "zero_mixing": [0.9]}, ValueError),
        ({"weight_decay": 1.0, "learn_zero_mixing": "yes"}, TypeError),
        ({"weight_decay": 1.0, "num_component": 4}, TypeError),
    ],
)
def test_bad_arguments_raise_at_construction(kwargs, error):
    with pytest.raises(error):
        optreg.soft_share_prior(**kwargs)


def test_inject_hyperparams_needs_the_integer_arguments_static_and_says_which():
    params = {"w": jnp.linspace(-0.5, 0.5, 40)}
    with pytest.raises(TypeError, match=r"static_args=\('num_components', 'grid_size', 'refresh_every'\)"):
        optax.inject_hyperparams(optreg.soft_share_prior)(weight_decay=1e-2).init(params)
    tx = optax.inject_hyperparams(optreg.soft_share_prior, static_args=("num_components", "grid_size",
                                                                       "refresh_every"))(weight_decay=1e-2)
    plain = optreg.soft_share_prior(1e-2)
    chex.assert_trees_all_close(tx.update(params, tx.init(params), params)[0],
                                plain.update(params, plain.init(params), params)[0], rtol=1e-6)


def test_update_without_params_says_how_to_fix():
    tx = optreg.soft_share_prior(1.0, K)
    params = weights_tree()
    with pytest.raises(ValueError, match="params"):
        tx.update(params, tx.init(params))


# ----------------------------------------------------------------------------- the renamed strength


SPELLING = "soft_share_prior(weight_decay=τ, num_components=K)"


@pytest.mark.parametrize("call", [
    lambda: optreg.soft_share_prior(17, strength=1e-3),
    lambda: optreg.soft_share_prior(strength=1e-3),
    lambda: optreg.soft_share_prior(num_components=17, strength=1e-3),
    lambda: optreg.soft_share_prior(17),  # the old positional K: its meaning changed
    lambda: optreg.soft_share_prior(17, 1e-3),
])
def test_old_spelling_raises_naming_the_new_one(call):
    with pytest.raises(TypeError) as info:
        call()
    assert SPELLING in str(info.value)


def test_old_penalty_order_raises_naming_the_new_one():
    params = weights_tree()
    state = TX["exact"].init(params)
    for call in (lambda: optreg.soft_share_penalty(params, state, 1e-3),
                 lambda: optreg.soft_share_penalty(params, state),
                 lambda: optreg.soft_share_penalty(params, 1e-3, state, strength=1.0)):
        with pytest.raises(TypeError, match=r"soft_share_penalty\(params, weight_decay=τ, state=state\)"):
            call()


def test_moved_keywords_still_work_with_a_deprecation_warning():
    params = {"w": jnp.linspace(-0.5, 0.5, 12)}
    with pytest.warns(DeprecationWarning) as record:
        old = optreg.soft_share_prior(1e-2, 4, mode="exact", precision_prior=(100.0, 0.5),
                                      learning_rates=(1e-3, 1e-3, 1e-3))
    messages = " ".join(str(w.message) for w in record)
    assert "prior=optreg.MixturePrior(precision=...)" in messages and "pass optimizer=" in messages
    new = optreg.soft_share_prior(1e-2, 4, mode="exact", prior=MixturePrior(precision=(100.0, 0.5)),
                                  optimizer=optax.adam(1e-3))
    ua, sa = jax.jit(old.update)(params, old.init(params), params)
    ub, sb = jax.jit(new.update)(params, new.init(params), params)
    chex.assert_trees_all_close((ua, sa[1:4]), (ub, sb[1:4]), atol=1e-7)


# ----------------------------------------------------------------------------- derivatives and the recorded mask


def test_penalty_derivatives_match_central_differences_in_float64():
    with jax.enable_x64(True):
        rng = np.random.default_rng(7)
        params = {"a": jnp.asarray(rng.uniform(-0.6, 0.6, (4, 3))), "b": jnp.asarray(rng.uniform(-0.6, 0.6, 5))}
        state = MixtureState(jnp.zeros([], jnp.int32), jnp.asarray([0.0, -0.5, -0.1, 0.2, 0.45]),
                             jnp.asarray(np.log([400.0, 60.0, 90.0, 30.0, 120.0])),
                             jnp.asarray(np.log([0.8, 0.05, 0.05, 0.05, 0.05])))
        prior = MixturePrior(zero_mixing=(20.0, 3.0))

        @jax.jit
        def value(p, means, log_precisions, logits):
            s = state._replace(means=means, log_precisions=log_precisions, mixing_logits=logits)
            return optreg.soft_share_penalty(p, 0.3, s, prior=prior)

        args = (params, state.means, state.log_precisions, state.mixing_logits)
        flat, unravel = ravel_pytree(args)
        analytic = ravel_pytree(jax.grad(value, argnums=(0, 1, 2, 3))(*args))[0]
        h = 1e-5
        for index in range(flat.size):
            step = jnp.zeros_like(flat).at[index].set(h)
            numeric = (value(*unravel(flat + step)) - value(*unravel(flat - step))) / (2 * h)
            np.testing.assert_allclose(analytic[index], numeric, rtol=1e-5, atol=1e-6)
        assert value(*args).dtype == jnp.float64


def test_state_records_the_mask_and_the_penalty_reuses_it():
    params = weights_tree()
    state = TX["fast"].init(params)
    assert [bool(flag) for flag in state.mask] == jax.tree.leaves(MASK)  # one flag per leaf, in leaf order
    explicit = optreg.soft_share_penalty(params, STRENGTH, state._replace(mask=None), mask=MASK)
    np.testing.assert_allclose(optreg.soft_share_penalty(params, STRENGTH, state), explicit, rtol=1e-6)
    everything = optreg.soft_share_penalty(params, STRENGTH, state._replace(mask=None))
    assert float(everything) != pytest.approx(float(explicit))
    jitted = jax.jit(lambda p, s: optreg.soft_share_penalty(p, STRENGTH, s))(params, state)  # traced flags
    np.testing.assert_allclose(jitted, explicit, rtol=1e-6)
