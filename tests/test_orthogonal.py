"""add_orthogonal_decay, orthogonal_penalty: (λ/4)·Σ‖WᵀW − I‖²_F (Brock et al. 2017, 2019), gradient λ·W(WᵀW − I)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tree_allclose

import optreg
from optreg import _tree


def apply(tx, updates, params):
    updates, _ = tx.update(updates, tx.init(params), params)
    return updates


def kernels(seed=0, dtype=jnp.float32):
    """A tall, a wide and a convolution kernel, a bias and a scalar."""
    rng = np.random.default_rng(seed)

    def draw(*shape):
        return jnp.asarray(rng.normal(0.0, 0.5, size=shape), dtype)

    return {"tall": draw(7, 3), "wide": draw(2, 5), "conv": draw(3, 3, 2, 4), "bias": draw(4), "scalar": draw()}


def numpy_matrix(x):
    x = np.asarray(x, np.float64)
    return x.reshape(-1, x.shape[-1])


def numpy_penalty(params, lam):
    """(λ/4)·Σ‖WᵀW − I‖²_F, directly from the definition, in float64."""
    total = 0.0
    for x in jax.tree.leaves(params):
        if np.ndim(x) >= 2:
            w = numpy_matrix(x)
            total += np.sum((w.T @ w - np.eye(w.shape[1])) ** 2)
    return lam / 4 * total


def numpy_gradient(x, lam):
    w = numpy_matrix(x)
    return (lam * w @ (w.T @ w - np.eye(w.shape[1]))).reshape(np.shape(x))


def test_penalty_equals_the_definition():
    params = kernels()
    np.testing.assert_allclose(optreg.orthogonal_penalty(params, 0.3), numpy_penalty(params, 0.3), rtol=1e-5)


def test_transform_adds_the_closed_form_gradient_and_leaves_vectors_alone():
    params, grads = kernels(0), kernels(1)
    out = apply(optreg.add_orthogonal_decay(0.3), grads, params)
    for name in ("tall", "wide", "conv"):
        np.testing.assert_allclose(out[name], np.asarray(grads[name], np.float64) + numpy_gradient(params[name], 0.3),
                                   rtol=1e-5, atol=1e-6)
    for name in ("bias", "scalar"):
        np.testing.assert_array_equal(out[name], grads[name])


def test_transform_equals_grad_of_the_penalty_and_of_the_naive_formula():
    params, grads = kernels(2), kernels(3)
    out = apply(optreg.add_orthogonal_decay(0.7), grads, params)
    tree_allclose(out, jax.tree.map(jnp.add, grads, jax.grad(optreg.orthogonal_penalty)(params, 0.7)),
                  rtol=1e-5, atol=1e-6)

    def naive(p):  # the definition with WᵀW, whatever the shape
        terms = [jnp.sum((x.reshape(-1, x.shape[-1]).T @ x.reshape(-1, x.shape[-1]) - jnp.eye(x.shape[-1])) ** 2)
                 for x in jax.tree.leaves(p) if x.ndim >= 2]
        return 0.7 / 4 * sum(terms)

    tree_allclose(out, jax.tree.map(jnp.add, grads, jax.grad(naive)(params)), rtol=1e-5, atol=1e-6)


def test_penalty_jvp_matches_central_differences_in_float64():
    with jax.enable_x64(True):
        params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), kernels(4))
        direction = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), kernels(5))

        def f(p):
            return optreg.orthogonal_penalty(p, 0.9)

        _, tangent = jax.jvp(f, (params,), (direction,))
        h = 1e-6
        plus, minus = (jax.tree.map(lambda x, d, s=s: x + s * h * d, params, direction) for s in (1, -1))
        np.testing.assert_allclose(tangent, (f(plus) - f(minus)) / (2 * h), rtol=1e-7)
        assert f(params).dtype == jnp.float64


def test_orthonormal_kernels_have_zero_gradient():
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(6, 4)))
    params = {"tall": jnp.asarray(q, jnp.float32), "wide": jnp.asarray(q.T, jnp.float32)}
    out = apply(optreg.add_orthogonal_decay(1.0), jax.tree.map(jnp.zeros_like, params), params)
    tree_allclose(out, jax.tree.map(jnp.zeros_like, params), rtol=0, atol=2e-6)
    # WᵀW of the wide (4, 6) kernel is a rank-4 projection: ‖P − I₆‖² = 2, the penalty's floor for it
    np.testing.assert_allclose(optreg.orthogonal_penalty(params, 1.0), 1 / 4 * 2, atol=1e-5)


def test_gradient_descent_drives_singular_values_to_one():
    rng = np.random.default_rng(1)
    params = {"kernel": jnp.asarray(rng.normal(0.0, 0.6, size=(3, 3, 4, 8)), jnp.float32)}
    tx = optax.chain(optreg.add_orthogonal_decay(1.0), optax.sgd(0.05))
    state = tx.init(params)
    step = jax.jit(lambda p, s: tx.update(jax.tree.map(jnp.zeros_like, p), s, p))
    for _ in range(400):
        updates, state = step(params, state)
        params = optax.apply_updates(params, updates)
    singular = np.linalg.svd(numpy_matrix(params["kernel"]), compute_uv=False)
    np.testing.assert_allclose(singular, 1.0, atol=1e-4)


def test_differs_from_keras_style_cosine_penalty_on_orthogonal_columns_of_other_norms():
    """Keras' OrthogonalRegularizer(mode="columns") only sees directions; this penalty also sees the norms."""
    w = np.diag([0.5, 2.0, 3.0]).astype(np.float32)
    normalized = w / np.linalg.norm(w, axis=0)
    cosines = normalized.T @ normalized
    keras_style = 0.5 * np.sum(np.abs(cosines - np.diag(np.diag(cosines)))) / 3  # factor 1, 3 pairs
    assert keras_style == 0.0
    np.testing.assert_allclose(optreg.orthogonal_penalty({"w": jnp.asarray(w)}, 1.0),
                               ((0.25 - 1) ** 2 + (4 - 1) ** 2 + (9 - 1) ** 2) / 4, rtol=1e-6)


def test_mask_pytree_callable_and_prefix():
    params, grads = kernels(0), kernels(1)
    flags = {"tall": True, "wide": False, "conv": True, "bias": True, "scalar": False}
    by_tree = apply(optreg.add_orthogonal_decay(0.5, mask=flags), grads, params)
    by_function = apply(optreg.add_orthogonal_decay(0.5, mask=lambda p: flags), grads, params)
    tree_allclose(by_tree, by_function, rtol=0, atol=0)
    np.testing.assert_array_equal(by_tree["wide"], grads["wide"])
    np.testing.assert_array_equal(by_tree["bias"], grads["bias"])
    np.testing.assert_allclose(by_tree["tall"], np.asarray(grads["tall"]) + numpy_gradient(params["tall"], 0.5),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(optreg.orthogonal_penalty(params, 0.5, mask=flags),
                               numpy_penalty({k: params[k] for k in ("tall", "conv")}, 0.5), rtol=1e-5)
    nested = {"encoder": kernels(0), "head": kernels(1)}
    prefix = apply(optreg.add_orthogonal_decay(0.5, mask={"encoder": True, "head": False}), nested, nested)
    tree_allclose(prefix["head"], nested["head"], rtol=0, atol=0)


def test_schedule_and_penalty_count():
    params = kernels()
    schedule = optax.linear_schedule(0.0, 1.0, transition_steps=4)
    tx = optreg.add_orthogonal_decay(schedule)
    state = tx.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    step = jax.jit(tx.update)
    for k in range(6):
        out, state = step(zeros, state, params)
        lam = min(k / 4, 1.0)
        np.testing.assert_allclose(out["conv"], numpy_gradient(params["conv"], lam), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(optreg.orthogonal_penalty(params, schedule, count=k), numpy_penalty(params, lam),
                                   rtol=1e-5, atol=1e-7)


def test_inject_hyperparams_and_jit():
    params, grads = kernels(0), kernels(1)
    injected = optax.inject_hyperparams(optreg.add_orthogonal_decay)(weight_decay=0.3)
    state = injected.init(params)
    got, state = jax.jit(injected.update)(grads, state, params)
    tree_allclose(got, apply(optreg.add_orthogonal_decay(0.3), grads, params), rtol=1e-5, atol=1e-6)
    state.hyperparams["weight_decay"] = jnp.asarray(0.0)
    got, _ = jax.jit(injected.update)(grads, state, params)
    tree_allclose(got, grads, rtol=0, atol=0)


def test_vmap_over_a_batch_of_kernels():
    batch = jnp.asarray(np.random.default_rng(3).normal(size=(4, 5, 3)), jnp.float32)
    tx = optreg.add_orthogonal_decay(0.2)
    out = jax.vmap(lambda w: tx.update(jnp.zeros_like(w), tx.init(w), w)[0])(batch)
    for w, g in zip(batch, out):
        np.testing.assert_allclose(g, numpy_gradient(w, 0.2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_keeps_dtypes(dtype):
    params, grads = kernels(0, dtype), kernels(1, dtype)
    out = apply(optreg.add_orthogonal_decay(0.1), grads, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, grads)
    expected = numpy_gradient(np.asarray(params["conv"], np.float32), 0.1) + np.asarray(grads["conv"], np.float32)
    np.testing.assert_allclose(np.asarray(out["conv"], np.float64), expected, rtol=2e-2, atol=2e-2)
    assert optreg.orthogonal_penalty(params, 0.1).dtype == jnp.float32


def test_no_nan_on_zeros_and_huge_values():
    zeros = {"w": jnp.zeros((4, 3))}
    out = apply(optreg.add_orthogonal_decay(1.0), zeros, zeros)["w"]
    np.testing.assert_array_equal(out, 0.0)
    np.testing.assert_allclose(optreg.orthogonal_penalty(zeros, 1.0), 3 / 4)
    rng = np.random.default_rng(0)
    for scale in (1e10, 1e19, 3e38):
        huge = {"w": jnp.asarray(rng.uniform(-1.0, 1.0, size=(6, 4)) * scale, jnp.float32)}
        assert bool(jnp.all(jnp.isfinite(huge["w"])))
        out = apply(optreg.add_orthogonal_decay(1e-3), zeros_like(huge), huge)["w"]
        assert not bool(jnp.any(jnp.isnan(out))), scale
        penalty = optreg.orthogonal_penalty(huge, 1e-3)
        assert not bool(jnp.isnan(penalty)) and float(penalty) > 0, scale
        assert not any(bool(jnp.any(jnp.isnan(g))) for g in jax.tree.leaves(jax.grad(optreg.orthogonal_penalty)(
            huge, 1e-3)))
    empty = {"a": jnp.zeros((0, 3)), "b": jnp.zeros((3, 0))}
    assert jax.tree.map(jnp.shape, apply(optreg.add_orthogonal_decay(1.0), empty, empty)) == {"a": (0, 3), "b": (3, 0)}
    np.testing.assert_allclose(optreg.orthogonal_penalty(empty, 1.0), 3 / 4)


def zeros_like(tree):
    return jax.tree.map(jnp.zeros_like, tree)


@pytest.mark.skipif(not hasattr(_tree, "flatten_updates"), reason="needs optreg._tree's None-update handling")
def test_none_updates_pass_through():
    params, grads = kernels(0), kernels(1)
    grads["tall"] = None
    assert apply(optreg.add_orthogonal_decay(0.1), grads, params)["tall"] is None


@pytest.mark.parametrize(
    "kwargs, error, text",
    [
        ({"weight_decay": -1e-4}, ValueError, "weight_decay must be finite and >= 0"),
        ({"weight_decay": float("nan")}, ValueError, "weight_decay"),
        ({"weight_decay": jnp.ones(3)}, ValueError, "scalar"),
        ({"weight_decay": "0.1"}, TypeError, "weight_decay"),
    ],
)
def test_bad_arguments_raise_at_construction(kwargs, error, text):
    with pytest.raises(error, match=text):
        optreg.add_orthogonal_decay(**kwargs)


def test_weight_decay_is_required_and_mask_keyword_only():
    with pytest.raises(TypeError):
        optreg.add_orthogonal_decay()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        optreg.add_orthogonal_decay(0.1, None)  # type: ignore[misc]
