"""Soft weight-sharing rows (issue 3): optreg's fast and exact modes vs autodiff of the naive mixture.

The naive alternative is what a user writes from the formula: the negative
log of a K-component Gaussian mixture, ``-τ Σ_i logsumexp_j(log π_j + log N(w_i | μ_j, 1/λ_j))``,
differentiated with ``jax.grad`` with respect to the weights *and* the mixture
parameters (the transform computes both each step). It touches N·K
transcendentals forwards and backwards.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Optional

import bench_steps as steps
import jax
import jax.numpy as jnp
import optax
from bench_cases import LEARNING_RATE, optreg_api
from bench_harness import Case, Step

#: τ per weight, as in Ullrich et al. (τ ≈ 0.005 / N).
STRENGTH_TIMES_N = 5e-3


def naive_mixture_penalty(
    weights: jax.Array, means: jax.Array, log_precisions: jax.Array, mixing_logits: jax.Array, strength: float
) -> jax.Array:
    """-τ Σ_i log Σ_j π_j N(w_i | μ_j, 1/λ_j), written the obvious way (an N x K array)."""
    log_pi = jax.nn.log_softmax(mixing_logits)
    diff = weights.reshape(-1, 1) - means
    log_normal = 0.5 * log_precisions - 0.5 * math.log(2 * math.pi) - 0.5 * jnp.exp(log_precisions) * diff**2
    return -strength * jnp.sum(jax.nn.logsumexp(log_pi + log_normal, axis=-1))


def naive_tree_penalty(params: Any, mixture: tuple, strength: float) -> jax.Array:
    return sum(naive_mixture_penalty(w, *mixture, strength) for w in jax.tree.leaves(params))


def default_mixture(params: Any, num_components: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Ullrich's initialisation: component 0 at 0 with π₀ = 0.99, the rest spread over the weight range."""
    leaves = jax.tree.leaves(params)
    low = min(float(jnp.min(x)) for x in leaves)
    high = max(float(jnp.max(x)) for x in leaves)
    means = jnp.concatenate([jnp.zeros(1), jnp.linspace(low, high, num_components - 1)]).astype(jnp.float32)
    spacing = (high - low) / max(num_components - 1, 1)
    log_precisions = jnp.full((num_components,), -2.0 * math.log(max(spacing, 1e-3)), jnp.float32)
    others = math.log(0.01 / max(num_components - 1, 1))
    mixing_logits = jnp.array([math.log(0.99)] + [others] * (num_components - 1), jnp.float32)
    return means, log_precisions, mixing_logits


def _exact_option(prior: Callable[..., Any]) -> Callable[[bool], dict]:
    """How this checkout's ``soft_share_prior`` selects exact vs fast mode."""
    parameters = inspect.signature(prior).parameters
    if "exact" in parameters:
        return lambda exact: {"exact": exact}
    for name in ("mode", "method", "gradient", "algorithm"):
        if name in parameters:
            return lambda exact, name=name: {name: "exact" if exact else "fast"}
    raise TypeError(f"cannot find the exact/fast option of soft_share_prior{inspect.signature(prior)}")


def soft_share_transform(num_components: int, n_params: int, exact: bool) -> optax.GradientTransformation:
    prior = optreg_api("soft_share_prior")
    options = _exact_option(prior)(exact)
    return prior(num_components=num_components, strength=STRENGTH_TIMES_N / n_params, **options)


def find_mixture(state: Any) -> Optional[tuple[jax.Array, jax.Array, jax.Array]]:
    """(means, log_precisions, mixing_logits) from anywhere inside an optax state, or None."""
    if all(hasattr(state, f) for f in ("means", "log_precisions", "mixing_logits")):
        return state.means, state.log_precisions, state.mixing_logits
    children = state if isinstance(state, (tuple, list)) else getattr(state, "__dict__", {}).values()
    for child in children:
        if child is state:
            continue
        found = find_mixture(child)
        if found is not None:
            return found
    return None


def soft_share_cases(
    n: int, ks: tuple[int, ...] = (5, 17, 65), group: str = "soft sharing", seed: int = 0
) -> list[Case]:
    """Per K: adam + fast, adam + exact, fast alone, exact alone, and ``jax.grad`` of the naive penalty."""
    shapes = steps.dense_shapes(n)
    size = steps.count_params(shapes)
    strength = STRENGTH_TIMES_N / size

    tree = steps.lazy_params_and_grads(shapes, seed)

    def adam() -> optax.GradientTransformation:
        return optax.adam(LEARNING_RATE)

    def chain(k: int, exact: bool) -> Callable[[], Step]:
        return lambda: steps.train_step(optax.chain(soft_share_transform(k, size, exact), adam()), *tree())

    def alone(k: int, exact: bool) -> Callable[[], Step]:
        return lambda: steps.update_only(soft_share_transform(k, size, exact), *tree())

    def naive(k: int) -> Callable[[], Step]:
        def build() -> Step:
            params, _ = tree()
            mixture = default_mixture(params, k)
            grad = jax.grad(lambda p, m: naive_tree_penalty(p, m, strength), argnums=(0, 1))
            return steps.function_step(grad, params, mixture)

        return build

    floor, base = "floor (p+g), soft-share tree", "adam, soft-share tree"
    common = dict(group=group, n_params=size, floor=floor)
    cases = [
        Case(floor, build=lambda: steps.floor_step(*tree()), **common),
        Case(base, build=lambda: steps.train_step(adam(), *tree()), **common),
    ]
    for k in ks:
        naive_name = f"jax.grad(naive mixture), K={k}"
        main = k == 17
        cases += [
            Case(f"soft_share_prior fast + adam, K={k}", baseline=base, target=2.0 if main else None,
                 target_source="issue 3" if main else "", build=chain(k, False), **common),
            Case(f"soft_share_prior exact + adam, K={k}", baseline=base, build=chain(k, True), **common),
            Case(f"soft_share_prior fast alone, K={k}", baseline=naive_name, target=1 / 20 if main else None,
                 target_source="issue 3" if main else "", build=alone(k, False), **common),
            Case(f"soft_share_prior exact alone, K={k}", baseline=naive_name, build=alone(k, True), **common),
            Case(naive_name, baseline=base, build=naive(k), **common,
                 note="jax.grad w.r.t. weights and mixture of -τ Σ logsumexp (N x K)"),
        ]
    return cases
