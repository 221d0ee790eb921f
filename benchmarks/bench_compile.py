"""Compile time of a full Flax (linen) MLP train step, with and without optreg transforms.

Each repetition jits a fresh function, so tracing, lowering and XLA
compilation all run again; trace+lower and compile are timed separately.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from bench_cases import LEARNING_RATE, WEIGHT_DECAY, optreg_api
from bench_harness import reported
from bench_soft_share import soft_share_transform


def _mlp(features: tuple[int, ...]) -> Any:
    import flax.linen as nn

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            for width in features[:-1]:
                x = nn.relu(nn.Dense(width)(x))
            return nn.Dense(features[-1])(x)

    return MLP()


def compile_variants(n_params: int) -> dict[str, Callable[[], optax.GradientTransformation]]:
    def adam() -> optax.GradientTransformation:
        return optax.adam(LEARNING_RATE)

    return {
        "adam": adam,
        "optax.adamw": lambda: optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY),
        "add_decayed_weights_q(q=1.5) + adam": lambda: optax.chain(
            optreg_api("add_decayed_weights_q")(WEIGHT_DECAY, 1.5), adam()),
        "per_layer_decay + adam": lambda: optax.chain(
            optreg_api("per_layer_decay")({r"Dense_0/": 1e-3, r"Dense_[1-9]/": 1e-4}), adam()),
        "adam + proximal_lq(q=1)": lambda: optax.chain(
            adam(), optreg_api("proximal_lq")(LEARNING_RATE, WEIGHT_DECAY, 1.0)),
        "adam + project_lq_ball(q=2)": lambda: optax.chain(adam(), optreg_api("project_lq_ball")(10.0, 2.0)),
        "soft_share_prior fast + adam, K=17": lambda: optax.chain(soft_share_transform(17, n_params, False), adam()),
    }


def measure_compile_times(
    features: tuple[int, ...] = (784, 512, 512, 256, 10), batch: int = 128, repeats: int = 3,
    select: Callable[[str], bool] = lambda name: True, log: Callable[[str], None] = print,
) -> dict:
    """Median trace+lower and compile seconds per variant, and the total relative to plain adam."""
    model = _mlp(features[1:])
    x = jnp.ones((batch, features[0]), jnp.float32)
    y = jnp.zeros((batch,), jnp.int32)
    params = model.init(jax.random.key(0), x)
    n_params = sum(leaf.size for leaf in jax.tree.leaves(params))
    rows = []
    for name, make_tx in compile_variants(n_params).items():
        if name != "adam" and not select(name):
            continue
        row: dict[str, Any] = {"name": name}
        with reported(row):
            tx = make_tx()
            opt_state = tx.init(params)
            lowers, compiles = [], []
            for _ in range(repeats):

                def train_step(p: Any, s: Any, xb: jax.Array, yb: jax.Array) -> tuple[Any, Any, jax.Array]:
                    def loss_fn(q: Any) -> jax.Array:
                        logits = model.apply(q, xb)
                        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

                    loss, grads = jax.value_and_grad(loss_fn)(p)
                    updates, s = tx.update(grads, s, p)
                    return optax.apply_updates(p, updates), s, loss

                start = time.perf_counter()
                lowered = jax.jit(train_step, donate_argnums=(0, 1)).lower(params, opt_state, x, y)
                middle = time.perf_counter()
                lowered.compile()
                end = time.perf_counter()
                lowers.append(middle - start)
                compiles.append(end - middle)
            row.update(status="ok", trace_lower_s=statistics.median(lowers), compile_s=statistics.median(compiles))
            row["total_s"] = row["trace_lower_s"] + row["compile_s"]
        log(f"  compile {name}: {row.get('total_s', row.get('reason'))}")
        rows.append(row)
    base = next((r for r in rows if r["name"] == "adam" and r["status"] == "ok"), None)
    for row in rows:
        if base is not None and row["status"] == "ok":
            row["ratio_vs_adam"] = row["total_s"] / base["total_s"]
    return {"model": f"flax.linen MLP {features}, batch {batch}, {n_params:,} params", "repeats": repeats,
            "rows": rows}


def compile_markdown(table: dict) -> str:
    lines = [f"Model: {table['model']}; median of {table['repeats']} fresh jits.", "",
             "| train step | trace+lower | XLA compile | total | vs adam |", "|---|---:|---:|---:|---:|"]
    for row in table["rows"]:
        if row["status"] != "ok":
            lines.append(f"| {row['name']} | - | - | - | {row['status']}: {row['reason']} |")
            continue
        lines.append(f"| {row['name']} | {row['trace_lower_s']:.3f} s | {row['compile_s']:.3f} s | "
                     f"{row['total_s']:.3f} s | {row.get('ratio_vs_adam', float('nan')):.2f} |")
    return "\n".join(lines)
