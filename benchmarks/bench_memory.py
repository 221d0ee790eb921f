"""Peak-memory checks from the compiled HLO: extra state, temporaries, N x K arrays.

For each transform's jitted ``update`` on N parameters this reports the
optimizer-state size, XLA's temporary allocation (``memory_analysis()``), and
the largest array the top-level (ENTRY) computation materialises, in units of
N. A fast soft-sharing path must not materialise an N x K array; its
temporaries should stay O(N) (+ O(K) for the mixture).
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Optional

import bench_steps as steps
import jax
import jax.numpy as jnp
import numpy as np
import optax
from bench_cases import LEARNING_RATE, WEIGHT_DECAY, optreg_api
from bench_harness import reported
from bench_soft_share import (
    STRENGTH_TIMES_N,
    default_mixture,
    find_mixture,
    naive_tree_penalty,
    soft_share_transform,
)

_SHAPE = re.compile(r"\b(?:pred|[suf]\d+|bf16)\[([\d,]*)\]")


def _entry_lines(hlo_text: str) -> list[str]:
    lines, inside = [], False
    for line in hlo_text.splitlines():
        if line.startswith("ENTRY"):
            inside = True
            continue
        if inside:
            if line.startswith("}"):
                break
            lines.append(line)
    return lines


def largest_entry_array(hlo_text: str) -> int:
    """Elements of the largest array an instruction of the ENTRY computation produces."""
    largest = 0
    for line in _entry_lines(hlo_text):
        if " = " not in line:
            continue
        rhs = line.split(" = ", 1)[1]
        result_type = rhs[: rhs.index(")") + 1] if rhs.startswith("(") else rhs.split(" ", 1)[0]
        for dims in _SHAPE.findall(result_type):
            size = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
            largest = max(largest, size)
    return largest


def _state_bytes(state: Any) -> int:
    return int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(state)))


def analyse(fn: Callable[..., Any], *args: Any) -> dict:
    compiled = jax.jit(fn).lower(*args).compile()
    stats = compiled.memory_analysis()
    out = {"largest_entry_array": largest_entry_array(compiled.as_text())}
    for key in ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes"):
        out[key] = int(getattr(stats, key, -1)) if stats is not None else None
    return out


def memory_report(
    n: int, ks: tuple[int, ...] = (17, 65), select: Callable[[str], bool] = lambda name: True,
    log: Callable[[str], None] = print,
) -> dict:
    shapes = {"params": {"kernel": (max(1, n // 1024), min(n, 1024))}}  # one leaf: sizes read in units of N
    params, grads = steps.params_and_grads(shapes)
    size = steps.count_params(params)
    variants: list[tuple[str, int, Callable[[], Optional[optax.GradientTransformation]]]] = [
        ("adam (reference)", 1, lambda: optax.adam(LEARNING_RATE)),
        ("add_decayed_weights_q(q=1.5)", 1, lambda: optreg_api("add_decayed_weights_q")(WEIGHT_DECAY, 1.5)),
        ("proximal_lq(q=1)", 1, lambda: optreg_api("proximal_lq")(LEARNING_RATE, WEIGHT_DECAY, 1.0)),
        ("proximal_lq(q=0.5)", 1, lambda: optreg_api("proximal_lq")(LEARNING_RATE, WEIGHT_DECAY, 0.5)),
        ("project_lq_ball(q=2)", 1, lambda: optreg_api("project_lq_ball")(10.0, 2.0)),
        ("project_lq_ball(q=1.5)", 1, lambda: optreg_api("project_lq_ball")(10.0, 1.5)),
    ]
    for k in ks:
        variants.append((f"soft_share_prior fast, K={k}", k, lambda k=k: soft_share_transform(k, size, False)))
        variants.append((f"soft_share_prior exact, K={k}", k, lambda k=k: soft_share_transform(k, size, True)))
        variants.append((f"jax.grad(naive mixture), K={k}", k, lambda: None))
    rows = []
    for name, k, make in variants:
        if not select(name):
            continue
        row: dict[str, Any] = {"name": name, "K": k}
        with reported(row):
            tx = make()
            if tx is None:
                mixture = default_mixture(params, k)
                strength = STRENGTH_TIMES_N / size
                row["state_bytes"] = _state_bytes(mixture)
                row.update(analyse(jax.grad(lambda p, m: naive_tree_penalty(p, m, strength), argnums=(0, 1)),
                                   params, mixture))
            else:
                state = tx.init(params)
                row["state_bytes"] = _state_bytes(state)
                row.update(analyse(lambda s, g, p, tx=tx: tx.update(g, s, p), state, grads, params))
            row["status"] = "ok"
            row["temp_per_param_bytes"] = row["temp_size_in_bytes"] / size
            row["largest_array_over_n"] = row["largest_entry_array"] / size
            row["materialises_nk"] = bool(k > 1 and (row["largest_entry_array"] >= size * k
                                                     or row["temp_size_in_bytes"] >= 4 * size * k))
        log(f"  memory {name}: {row.get('temp_size_in_bytes', row.get('reason'))}")
        rows.append(row)
    checked = tuple(k for k in ks if select(f"soft_share_prior exact, K={k}"))
    return {"n_params": size, "rows": rows, "accuracy": soft_share_accuracy(params, checked)}


#: Largest accepted max |fast − exact| / max |exact| of the soft-sharing weight gradient.
FAST_VS_EXACT_TOLERANCE = 1e-4


def soft_share_accuracy(params: Any, ks: tuple[int, ...]) -> list[dict]:
    """Max |fast − exact| of the added weight gradient, relative to max |exact|, and exact vs jax.grad(naive)."""
    size = steps.count_params(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    rows = []
    for k in ks:
        row: dict[str, Any] = {"K": k}
        with reported(row):
            fast, exact = soft_share_transform(k, size, False), soft_share_transform(k, size, True)
            added_fast, _ = jax.jit(fast.update)(zeros, fast.init(params), params)
            exact_state = exact.init(params)
            added_exact, _ = jax.jit(exact.update)(zeros, exact_state, params)
            scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(added_exact))
            diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                       zip(jax.tree.leaves(added_fast), jax.tree.leaves(added_exact)))
            row.update(status="ok", fast_vs_exact=diff / scale, tolerance=FAST_VS_EXACT_TOLERANCE)
            mixture = find_mixture(exact_state)
            if mixture is not None:
                strength = STRENGTH_TIMES_N / size
                naive = jax.jit(jax.grad(lambda p: naive_tree_penalty(p, mixture, strength)))(params)
                diff_naive = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                                 zip(jax.tree.leaves(naive), jax.tree.leaves(added_exact)))
                row["exact_vs_naive_autodiff"] = diff_naive / scale
        rows.append(row)
    return rows


def _mb(value: Optional[int]) -> str:
    return "-" if value is None or value < 0 else f"{value / 2**20:.1f} MiB"


def memory_markdown(report: dict) -> str:
    n = report["n_params"]
    lines = [f"N = {n:,} float32 parameters ({_mb(4 * n)} per copy); `update` alone, compiled.", "",
             "| transform | state | XLA temp | largest ENTRY array | N x K materialised |",
             "|---|---:|---:|---:|---|"]
    for row in report["rows"]:
        if row["status"] != "ok":
            lines.append(f"| {row['name']} | - | - | - | {row['status']}: {row['reason']} |")
            continue
        state = row["state_bytes"]
        state_text = f"{state} B" if state < 2**20 else _mb(state)
        nk = ("**yes**" if row["materialises_nk"] else "no") if row["K"] > 1 else "n/a"
        lines.append(f"| {row['name']} | {state_text} | {_mb(row['temp_size_in_bytes'])} "
                     f"({row['temp_per_param_bytes']:.1f} B/param) | {row['largest_array_over_n']:.2f} N | {nk} |")
    accuracy = [a for a in report["accuracy"] if a["status"] == "ok"]
    if accuracy:
        lines += ["", "| K | soft-share fast vs exact (max abs diff / max abs) | exact vs jax.grad(naive) |",
                  "|---:|---:|---:|"]
        for a in accuracy:
            naive = a.get("exact_vs_naive_autodiff")
            tolerance = a.get("tolerance", FAST_VS_EXACT_TOLERANCE)
            lines.append(f"| {a['K']} | {a['fast_vs_exact']:.2e} (target <= {tolerance:g}) | "
                         f"{'-' if naive is None else f'{naive:.2e}'} |")
    return "\n".join(lines)
