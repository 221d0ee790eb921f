"""Soft weight-sharing rows: optreg's fast and exact modes vs autodiff of the naive mixture, and end to end.

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
import numpy as np
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
    return prior(weight_decay=STRENGTH_TIMES_N / n_params, num_components=num_components, **options)


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
            Case(f"soft_share_prior fast + adam, K={k}", baseline=base, build=chain(k, False), **common),
            Case(f"soft_share_prior exact + adam, K={k}", baseline=base, build=chain(k, True), **common),
            Case(f"soft_share_prior fast alone, K={k}", baseline=naive_name, target=1 / 20 if main else None,
                 target_source="earlier target" if main else "", build=alone(k, False), **common),
            Case(f"soft_share_prior exact alone, K={k}", baseline=naive_name, build=alone(k, True), **common),
            Case(naive_name, baseline=base, build=naive(k), **common,
                 note="jax.grad w.r.t. weights and mixture of -τ Σ logsumexp (N x K)"),
        ]
    return cases


# ----------------------------------------------------------------------------- end to end: a jitted Flax train step

#: The targets for chain(soft_share_prior(τ, 17), adam) over adam, end to end.
END_TO_END_TARGETS = {"LeNet-300-100": 1.5, "LeNet-5": 1.05}
BATCH = 128


def lenet(name: str) -> tuple[Any, tuple[int, ...]]:
    """(Flax module, input shape): LeNet-300-100 (784-300-100-10) or Caffe's LeNet-5 (conv 20@5x5, max pool,
    conv 50@5x5, max pool, dense 500, 10; 431k weights), the networks Ullrich et al. and Han et al. compress."""
    import flax.linen as nn

    class LeNet300100(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            x = nn.relu(nn.Dense(300)(x.reshape(x.shape[0], -1)))
            return nn.Dense(10)(nn.relu(nn.Dense(100)(x)))

    class LeNet5(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            x = nn.max_pool(nn.Conv(20, (5, 5), padding="VALID")(x), (2, 2), (2, 2))
            x = nn.max_pool(nn.Conv(50, (5, 5), padding="VALID")(x), (2, 2), (2, 2))
            x = nn.relu(nn.Dense(500)(x.reshape(x.shape[0], -1)))
            return nn.Dense(10)(x)

    return (LeNet300100(), (BATCH, 784)) if name == "LeNet-300-100" else (LeNet5(), (BATCH, 28, 28, 1))


def flax_train_step(name: str, make_tx: Callable[[int], optax.GradientTransformation], seed: int = 0) -> Step:
    """One jitted Flax train step (forward, backward, ``tx.update``, apply), params and state donated."""
    model, shape = lenet(name)
    key = jax.random.key(seed)
    x = jax.random.uniform(key, shape, jnp.float32)
    y = jax.random.randint(jax.random.fold_in(key, 1), (shape[0],), 0, 10)
    params = model.init(key, x[:1])["params"]
    tx = make_tx(sum(int(leaf.size) for leaf in jax.tree.leaves(params)))

    def step(p: Any, s: Any, xb: jax.Array, yb: jax.Array) -> tuple[Any, Any]:
        def loss(q: Any) -> jax.Array:
            return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": q}, xb), yb).mean()

        updates, s = tx.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, updates), s

    return steps.CompiledStep(step, [params, tx.init(params)], (x, y), True, list)


def end_to_end_cases(k: int = 17, variants: Optional[dict[str, dict]] = None) -> list[Case]:
    """Per network: adam, and chain(soft_share_prior(τ = 0.005/N, K), adam) (plus option ``variants``)."""
    cases = []
    for name, target in END_TO_END_TARGETS.items():
        model, shape = lenet(name)
        base = f"adam, {name}"
        size = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(
            jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1,) + shape[1:])))["params"]))
        common = dict(group=f"end to end, {name}, batch {BATCH}", n_params=size)
        cases.append(Case(base, build=lambda name=name: flax_train_step(name, lambda n: optax.adam(LEARNING_RATE)),
                          **common))
        for label, options in {"": {}, **(variants or {})}.items():
            def make(n: int, options: dict = options) -> optax.GradientTransformation:
                prior = optreg_api("soft_share_prior")(STRENGTH_TIMES_N / n, k, **options)
                return optax.chain(prior, optax.adam(LEARNING_RATE))

            cases.append(Case(f"soft_share_prior({k}){label} + adam, {name}", baseline=base,
                              target=target if not label else None, target_source="issue" if not label else "",
                              build=lambda name=name, make=make: flax_train_step(name, make), **common))
    return cases


def cost_split(sizes: tuple[int, ...] = (2**10, 2**14, 2**17, 2**20), ks: tuple[int, ...] = (5, 17, 65),
               refreshes: tuple[int, ...] = (1, 8, 16), rounds: int = 6, min_time_s: float = 0.01) -> list[dict]:
    """time(N) = fixed + per_weight·N of ``soft_share_prior.update`` alone (fast mode), fitted per K and k.

    The fixed part is what does not grow with N (the table over the grid, the mixture's step; with
    ``refresh_every=k`` both are done every k-th update, so the average shown is a k-th of it plus
    the per-step switch); the per-weight part the interpolation (and the histogram on refreshes).
    """
    from bench_harness import run_phase

    rows = []
    for k in ks:
        for every in refreshes:
            cases = []
            for n in sizes:
                tree = steps.lazy_params_and_grads({"w": (n // 64, 64)}, 0)
                tx = optreg_api("soft_share_prior")(STRENGTH_TIMES_N / n, k, refresh_every=every)
                cases.append(Case(f"K={k}, k={every}, N={n}", group="cost split", n_params=n,
                                  build=lambda tree=tree, tx=tx: steps.update_only(tx, *tree())))
            results = run_phase(cases, rounds, min_time_s, log=lambda *_: None)
            times = np.array([r.median_s for r in results])
            per_weight, fixed = np.polyfit(np.array(sizes, float), times, 1)
            rows.append({"K": k, "refresh_every": every, "fixed_s": float(fixed), "per_weight_s": float(per_weight),
                         "times_s": dict(zip(map(int, sizes), map(float, times)))})
    return rows


def main(argv: Optional[list] = None) -> int:
    """``python benchmarks/bench_soft_share.py``: the end-to-end rows and the fixed/per-weight split."""
    import argparse
    import json

    from bench_harness import describe_machine, machine_info, markdown_table, run_phase

    parser = argparse.ArgumentParser(description="soft_share_prior end to end (Flax) and its cost split")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--skip-split", action="store_true")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=VALUE[,NAME=VALUE]",
                        help="also time soft_share_prior with these options (JSON values), interleaved with the "
                             "default, e.g. --variant refresh_every=1")
    args = parser.parse_args(argv)
    info = machine_info()
    print(describe_machine(info))
    variants = {f" [{text}]": {name: json.loads(value) for name, _, value in
                               (item.partition("=") for item in text.split(","))} for text in args.variant}
    results = run_phase(end_to_end_cases(variants=variants), args.rounds, 0.05, repeats=2)
    print(markdown_table(results))
    if not args.skip_split:
        split = cost_split()
        print("\n| K | refresh_every | fixed per step | per weight | "
              + " | ".join(f"N={n}" for n in split[0]["times_s"]) + " |")
        print("|---|---|---|---|" + "---|" * len(split[0]["times_s"]))
        for row in split:
            times = " | ".join(f"{t * 1e3:.3f} ms" for t in row["times_s"].values())
            print(f"| {row['K']} | {row['refresh_every']} | {row['fixed_s'] * 1e6:.0f} µs | "
                  f"{row['per_weight_s'] * 1e9:.2f} ns | {times} |")
        print(json.dumps(split))
    print(f"load average at end: {__import__('os').getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
