"""add_spectral_decay and spectral_penalty: (λ/2)·Σσ_max(W)² (Yoshida & Miyato 2017), power iteration in the state."""

from __future__ import annotations

import pickle

import chex
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tree_allclose

import optreg
from optreg import _tree


def kernels(seed=0, dtype=jnp.float32):
    """A tall, a wide and a convolution kernel (distinct top singular values), a bias and a scalar."""
    rng = np.random.default_rng(seed)

    def draw(*shape):
        return jnp.asarray(rng.normal(0.0, 0.5, size=shape), dtype)

    return {"tall": draw(7, 3), "wide": draw(2, 5), "conv": draw(3, 3, 2, 4), "bias": draw(4), "scalar": draw()}


def numpy_matrix(x):
    x = np.asarray(x, np.float64)
    return x.reshape(-1, x.shape[-1])


def top_pair(x):
    """(σ_max, u, v) of the (−1, fan_out) reshape, from NumPy's SVD in float64."""
    u, s, vt = np.linalg.svd(numpy_matrix(x), full_matrices=False)
    return s[0], u[:, 0], vt[0]


def numpy_gradient(x, lam):
    """∂/∂W of (λ/2)·σ_max² = λ·σ·u·vᵀ, in the kernel's shape."""
    sigma, u, v = top_pair(x)
    return (lam * sigma * np.outer(u, v)).reshape(np.shape(x))


def run(tx, params, steps):
    state = tx.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    step = jax.jit(tx.update)
    out = zeros
    for _ in range(steps):
        out, state = step(zeros, state, params)
    return out, state


MATRICES = ("tall", "wide", "conv")


def test_penalty_equals_half_lambda_sigma_max_squared():
    params = kernels()
    expected = 0.3 / 2 * sum(top_pair(params[name])[0] ** 2 for name in MATRICES)
    np.testing.assert_allclose(optreg.spectral_penalty(params, 0.3), expected, rtol=1e-5)


def test_penalty_gradient_is_lambda_sigma_u_v_and_matches_finite_differences():
    params = kernels(1)
    grad = jax.grad(optreg.spectral_penalty)(params, 0.7)
    for name in MATRICES:
        np.testing.assert_allclose(grad[name], numpy_gradient(params[name], 0.7), rtol=1e-4, atol=1e-6)
    for name in ("bias", "scalar"):
        np.testing.assert_array_equal(grad[name], 0.0)
    with jax.enable_x64(True):
        w = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), kernels(2))
        direction = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), kernels(3))

        def f(p):
            return optreg.spectral_penalty(p, 0.9)

        _, tangent = jax.jvp(f, (w,), (direction,))
        h = 1e-6
        plus, minus = (jax.tree.map(lambda x, d, s=s: x + s * h * d, w, direction) for s in (1, -1))
        np.testing.assert_allclose(tangent, (f(plus) - f(minus)) / (2 * h), rtol=1e-7)


def shorter_side(x):
    """The kernel's matrix with its shorter side first (what the state's vector belongs to)."""
    w = numpy_matrix(x)
    return w if w.shape[0] <= w.shape[1] else w.T


def test_the_state_converges_to_the_top_singular_pair():
    params = kernels(4)
    out, state = run(optreg.add_spectral_decay(1.0), params, 60)
    decayed = [params[name] for name in sorted(params) if np.ndim(params[name]) >= 2]  # leaf order: sorted keys
    assert [np.shape(u) for u in state.vectors] == [(4,), (3,), (2,)]  # conv 18 x 4, tall 7 x 3, wide 2 x 5
    for kernel, x in zip(decayed, state.vectors):
        sigma, left, _ = top_pair(shorter_side(kernel))
        np.testing.assert_allclose(abs(float(np.dot(np.asarray(x, np.float64), left))), 1.0, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(shorter_side(kernel).T @ np.asarray(x, np.float64)), sigma,
                                   rtol=1e-5)


def test_once_converged_the_update_is_the_penalty_gradient():
    params = kernels(5)  # conv: σ₂/σ₁ = 0.91, the error shrinks by 0.83 per step
    out, _ = run(optreg.add_spectral_decay(0.4), params, 200)
    for name in MATRICES:
        np.testing.assert_allclose(out[name], numpy_gradient(params[name], 0.4), rtol=1e-4, atol=1e-6)
    tree_allclose(out, jax.grad(optreg.spectral_penalty)(params, 0.4), rtol=1e-4, atol=1e-6)


def test_more_iterations_per_step_converge_in_one_step():
    params = kernels(6)
    out, _ = run(optreg.add_spectral_decay(0.4, num_iterations=60), params, 1)
    for name in MATRICES:
        np.testing.assert_allclose(out[name], numpy_gradient(params[name], 0.4), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["wide", "conv"])
def test_one_iteration_per_step_is_the_power_method_by_hand(name):
    """Each update: one step v ← Wᵀu/‖Wᵀu‖, u ← Wv/‖Wv‖ from the stored vector, and the term (Wv)·vᵀ.

    For the wide (2 x 5) kernel the stored vector is u; for the conv kernel (18 x 4) it is v, iterated on Wᵀ.
    """
    params = {"w": kernels(7)[name]}
    tx = optreg.add_spectral_decay(1.0)
    state = tx.init(params)
    x = np.asarray(state.vectors[0], np.float64)
    a = shorter_side(params["w"])
    step = jax.jit(tx.update)
    for _ in range(3):
        out, state = step(jax.tree.map(jnp.zeros_like, params), state, params)
        y = a.T @ x
        y /= np.linalg.norm(y)
        x = a @ y
        term = np.outer(x, y)  # σ·x·yᵀ of the shorter-side-first matrix
        x /= np.linalg.norm(x)
        expected = term if a.shape == numpy_matrix(params["w"]).shape else term.T
        np.testing.assert_allclose(np.asarray(out["w"]).reshape(expected.shape), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(state.vectors[0]), x, rtol=1e-5, atol=1e-6)


def test_initial_vectors_are_deterministic_and_seeded():
    params = kernels()
    a, b = optreg.add_spectral_decay(1.0).init(params), optreg.add_spectral_decay(1.0).init(params)
    tree_allclose(a.vectors, b.vectors, rtol=0, atol=0)
    c = optreg.add_spectral_decay(1.0, seed=3).init(params)
    assert not np.allclose(np.asarray(a.vectors[0]), np.asarray(c.vectors[0]))
    for u in a.vectors:
        np.testing.assert_allclose(np.linalg.norm(np.asarray(u)), 1.0, rtol=1e-6)


def test_zero_and_rank_deficient_kernels_give_no_nan_and_recover():
    params = {"w": jnp.zeros((5, 3))}
    tx = optreg.add_spectral_decay(1.0)
    out, state = run(tx, params, 3)
    np.testing.assert_array_equal(out["w"], 0.0)
    assert bool(jnp.all(jnp.isfinite(state.vectors[0])))
    moved = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(5, 3)), jnp.float32)}
    step = jax.jit(tx.update)
    for _ in range(60):
        out, state = step(jax.tree.map(jnp.zeros_like, moved), state, moved)
    np.testing.assert_allclose(out["w"], numpy_gradient(moved["w"], 1.0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(optreg.spectral_penalty(params, 1.0), 0.0)
    np.testing.assert_array_equal(jax.grad(optreg.spectral_penalty)(params, 1.0)["w"], 0.0)


@pytest.mark.parametrize("scale", [1e-30, 1e19, 3e38])
def test_tiny_and_huge_kernels(scale):
    base = np.random.default_rng(1).uniform(-1.0, 1.0, size=(6, 4))
    params = {"w": jnp.asarray(base * scale, jnp.float32)}
    assert bool(jnp.all(jnp.isfinite(params["w"])))
    out, state = run(optreg.add_spectral_decay(1e-3), params, 40)
    assert not bool(jnp.any(jnp.isnan(out["w"]))) and bool(jnp.all(jnp.isfinite(state.vectors[0])))
    _, _, right = top_pair(base)  # 6 x 4: the stored vector is the right one
    np.testing.assert_allclose(abs(float(np.dot(np.asarray(state.vectors[0], np.float64), right))), 1.0, atol=1e-4)
    if scale < 1e30:  # λ·σ·u·vᵀ is finite: it must be right
        np.testing.assert_allclose(np.asarray(out["w"], np.float64), numpy_gradient(base, 1e-3) * scale, rtol=1e-3)
    penalty = optreg.spectral_penalty(params, 1e-3)
    assert not bool(jnp.isnan(penalty))
    assert not bool(jnp.any(jnp.isnan(jax.grad(optreg.spectral_penalty)(params, 1e-3)["w"])))


def test_mask_pytree_callable_and_prefix():
    params, grads = kernels(0), kernels(1)
    flags = {"tall": True, "wide": False, "conv": True, "bias": True, "scalar": False}
    tx_tree = optreg.add_spectral_decay(0.5, mask=flags, num_iterations=60)
    tx_function = optreg.add_spectral_decay(0.5, mask=lambda p: flags, num_iterations=60)
    by_tree = tx_tree.update(grads, tx_tree.init(params), params)[0]
    by_function = tx_function.update(grads, tx_function.init(params), params)[0]
    tree_allclose(by_tree, by_function, rtol=0, atol=0)
    assert len(tx_tree.init(params).vectors) == 2
    for name in ("wide", "bias", "scalar"):
        np.testing.assert_array_equal(by_tree[name], grads[name])
    np.testing.assert_allclose(by_tree["tall"], np.asarray(grads["tall"]) + numpy_gradient(params["tall"], 0.5),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(optreg.spectral_penalty(params, 0.5, mask=flags),
                               0.25 * (top_pair(params["tall"])[0] ** 2 + top_pair(params["conv"])[0] ** 2), rtol=1e-5)
    nested = {"encoder": kernels(0), "head": kernels(1)}
    tx = optreg.add_spectral_decay(0.5, mask={"encoder": True, "head": False})
    tree_allclose(tx.update(nested, tx.init(nested), nested)[0]["head"], nested["head"], rtol=0, atol=0)


def test_schedule_and_penalty_count():
    params = kernels(2)
    schedule = optax.linear_schedule(0.0, 1.0, transition_steps=4)
    tx = optreg.add_spectral_decay(schedule, num_iterations=60)
    state = tx.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    step = jax.jit(tx.update)
    for k in range(6):
        out, state = step(zeros, state, params)
        lam = min(k / 4, 1.0)
        np.testing.assert_allclose(out["conv"], numpy_gradient(params["conv"], lam), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(optreg.spectral_penalty(params, schedule, count=k),
                                   lam / 2 * sum(top_pair(params[n])[0] ** 2 for n in MATRICES), rtol=1e-5, atol=1e-7)


def test_inject_hyperparams_with_static_ints():
    params, grads = kernels(0), kernels(1)
    injected = optax.inject_hyperparams(optreg.add_spectral_decay, static_args=("num_iterations", "seed"))(
        weight_decay=0.3, num_iterations=2)
    state = injected.init(params)
    got, state = jax.jit(injected.update)(grads, state, params)
    plain = optreg.add_spectral_decay(0.3, num_iterations=2)
    tree_allclose(got, plain.update(grads, plain.init(params), params)[0], rtol=1e-5, atol=1e-6)
    state.hyperparams["weight_decay"] = jnp.asarray(0.0)
    got, _ = jax.jit(injected.update)(grads, state, params)
    tree_allclose(got, grads, rtol=0, atol=0)
    with pytest.raises(TypeError, match="static_args"):
        optax.inject_hyperparams(optreg.add_spectral_decay)(weight_decay=0.3).init(params)


def test_vmap_over_a_batch_of_kernels():
    batch = jnp.asarray(np.random.default_rng(3).normal(size=(4, 5, 3)), jnp.float32)
    tx = optreg.add_spectral_decay(0.2, num_iterations=80)
    out = jax.vmap(lambda w: tx.update(jnp.zeros_like(w), tx.init(w), w)[0])(batch)
    for w, g in zip(batch, out):
        np.testing.assert_allclose(g, numpy_gradient(w, 0.2), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_keeps_dtypes(dtype):
    params, grads = kernels(0, dtype), kernels(1, dtype)
    tx = optreg.add_spectral_decay(0.1, num_iterations=40)
    state = tx.init(params)
    out, state = tx.update(grads, state, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, grads)
    assert all(u.dtype == jnp.float32 for u in state.vectors)
    expected = numpy_gradient(np.asarray(params["conv"], np.float32), 0.1) + np.asarray(grads["conv"], np.float32)
    np.testing.assert_allclose(np.asarray(out["conv"], np.float64), expected, rtol=2e-2, atol=2e-2)


def test_state_round_trips_through_checkpoints():
    params, grads = kernels(0), kernels(1)
    tx = optreg.add_spectral_decay(0.2)
    _, state = run(tx, params, 3)
    restored = flax.serialization.from_bytes(jax.tree.map(jnp.zeros_like, state), flax.serialization.to_bytes(state))
    assert isinstance(restored, optreg.SpectralState)
    tree_allclose(tx.update(grads, restored, params)[0], tx.update(grads, state, params)[0], rtol=0, atol=0)
    unpickled = pickle.loads(pickle.dumps(jax.device_get(state)))
    tree_allclose(unpickled.vectors, state.vectors, rtol=0, atol=0)


def test_tree_map_params_treats_the_vectors_as_one_non_params_field():
    params = kernels(0)
    tx = optax.chain(optreg.add_spectral_decay(0.1), optax.adam(1e-3))
    state = tx.init(params)
    specs = jax.tree.map(lambda _: "param", params)
    derived = optax.tree_utils.tree_map_params(tx, lambda _, spec: spec, state, specs,
                                               transform_non_params=lambda _: "replicated")
    assert derived[0].vectors == "replicated" and derived[0].count == "replicated"
    assert derived[1][0].mu == specs


def test_a_state_for_other_params_is_an_error():
    params = kernels(0)
    tx = optreg.add_spectral_decay(0.1)
    state = tx.init({"tall": params["tall"]})
    with pytest.raises(ValueError, match="state holds 1 vectors but the params have 3"):
        tx.update(params, state, params)


@pytest.mark.skipif(not hasattr(_tree, "flatten_updates"), reason="needs optreg._tree's None-update handling")
def test_none_updates_pass_through():
    params, grads = kernels(0), kernels(1)
    grads["tall"] = None
    tx = optreg.add_spectral_decay(0.1)
    assert tx.update(grads, tx.init(params), params)[0]["tall"] is None


@pytest.mark.parametrize(
    "kwargs, error, text",
    [
        ({"weight_decay": -1e-4}, ValueError, "weight_decay must be finite and >= 0"),
        ({"weight_decay": jnp.ones(3)}, ValueError, "scalar"),
        ({"num_iterations": 0}, ValueError, "num_iterations must be >= 1"),
        ({"num_iterations": 1.5}, TypeError, "num_iterations must be a Python int"),
        ({"num_iterations": True}, TypeError, "num_iterations"),
        ({"seed": -1}, ValueError, "seed must be >= 0"),
        ({"seed": "0"}, TypeError, "seed"),
    ],
)
def test_bad_arguments_raise_at_construction(kwargs, error, text):
    with pytest.raises(error, match=text):
        optreg.add_spectral_decay(**{"weight_decay": 0.1, **kwargs})


def test_update_without_params_says_how_to_fix():
    params = kernels()
    tx = optreg.add_spectral_decay(0.1)
    with pytest.raises(ValueError, match="needs the current parameters"):
        tx.update(params, tx.init(params))


def test_params_without_arrays_or_kernels_pass_through_eagerly_and_under_jit():
    """Empty params (init's placeholder state) and biases only: no kernel to decay, the updates unchanged."""
    tx = optreg.add_spectral_decay(0.1)
    for params in ({}, {"bias": jnp.ones(3)}):
        state = tx.init(params)
        for update in (tx.update, jax.jit(tx.update)):
            out, new_state = update(params, state, params)
            chex.assert_trees_all_equal(out, params)
            assert jax.tree.structure(new_state) == jax.tree.structure(state) and int(new_state.count) == 1
