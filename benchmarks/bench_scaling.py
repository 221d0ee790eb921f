"""Scaling: the main cases' step time as N grows, with the fitted log-log slope and a plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from bench_cases import optimizer_cases
from bench_harness import Case, Result, fit_loglog_slope, format_seconds, run_phase
from bench_soft_share import soft_share_cases

#: Rows followed across sizes: (name in the phase, label in the plot).
SCALED = (
    ("floor (p+g)", "floor (p+g)"),
    ("adam", "adam"),
    ("optax.add_decayed_weights + adam", "optax.add_decayed_weights + adam"),
    ("add_decayed_weights_q(q=2) + adam", "add_decayed_weights_q(q=2) + adam"),
    ("add_decayed_weights_q(q=1.5) + adam", "add_decayed_weights_q(q=1.5) + adam"),
    ("adam + proximal_lq(q=1)", "adam + proximal_lq(q=1)"),
    ("adam + project_lq_ball(q=2)", "adam + project_lq_ball(q=2)"),
    ("soft_share_prior fast + adam, K=17", "soft_share_prior fast + adam, K=17"),
)


def scaling_cases(n: int) -> list[Case]:
    wanted = {name for name, _ in SCALED}
    pool = optimizer_cases(n, group=f"scaling N={n}") + soft_share_cases(n, ks=(17,), group=f"scaling N={n}")
    chosen = [c for c in pool if c.name in wanted]
    for case in chosen:  # ratios are not the point here; keep every row independent
        case.baseline, case.floor, case.target = None, None, None
    return chosen


def run_scaling(
    sizes: list[int], rounds: int, min_time_s: float, seed: int, select: Callable[[Case], bool],
    log: Callable[[str], None] = print, repeats: int = 1,
) -> dict:
    """Times the SCALED rows at every size (interleaved within a size) and fits slopes."""
    per_size: list[list[Result]] = []
    actual_sizes: list[int] = []
    for n in sizes:
        cases = [c for c in scaling_cases(n) if select(c)]
        if not cases:
            continue
        log(f"scaling: N={n:,} ({len(cases)} cases)")
        results = run_phase(cases, rounds, min_time_s, seed, log, repeats)
        per_size.append(results)
        actual_sizes.append(results[0].n_params)
    table: dict = {"sizes": actual_sizes, "cases": {}}
    for name, _ in SCALED:
        times = []
        for results in per_size:
            match = [r for r in results if r.name == name]
            times.append(match[0].median_s if match and match[0].status == "ok" else float("nan"))
        if all(not math.isfinite(t) for t in times):
            continue
        slope = fit_loglog_slope(actual_sizes, times)
        top = [i for i, s in enumerate(actual_sizes) if s >= 1e6]
        slope_large = fit_loglog_slope([actual_sizes[i] for i in top], [times[i] for i in top])
        table["cases"][name] = {
            "median_s": [t if math.isfinite(t) else None for t in times],
            "slope": slope if math.isfinite(slope) else None,
            "slope_n_ge_1e6": slope_large if math.isfinite(slope_large) else None,
        }
    add_slopes_over_floor(table)
    return table


def add_slopes_over_floor(table: dict) -> None:
    """Slope of log(time / floor time) against log N: 0 means the row grows exactly like the memory floor.

    On a CPU the floor itself bends where the arrays stop fitting in cache, so
    this is the number that tells whether a row adds more than linear work.
    """
    floor = table["cases"].get("floor (p+g)")
    for row in table["cases"].values():
        if floor is None:
            row["slope_over_floor"] = None
            continue
        pairs = [(s, t / f) for s, t, f in zip(table["sizes"], row["median_s"], floor["median_s"]) if t and f]
        slope = fit_loglog_slope([s for s, _ in pairs], [r for _, r in pairs])
        row["slope_over_floor"] = slope if math.isfinite(slope) else None


def scaling_markdown(table: dict) -> str:
    sizes = table["sizes"]
    head = ("| case | " + " | ".join(f"N={s:.1e}" for s in sizes)
            + " | slope (all) | slope (N>=1e6) | slope of time/floor |")
    lines = [head, "|---|" + "---:|" * (len(sizes) + 3)]
    for name, row in table["cases"].items():
        cells = [format_seconds(t) if t is not None else "-" for t in row["median_s"]]
        slope = f"{row['slope']:.2f}" if row["slope"] is not None else "-"
        large = f"{row['slope_n_ge_1e6']:.2f}" if row["slope_n_ge_1e6"] is not None else "-"
        over = row.get("slope_over_floor")
        over_text = f"{over:+.2f}" if over is not None else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {slope} | {large} | {over_text} |")
    return "\n".join(lines)


def plot_scaling(table: dict, path: Path, title: str) -> None:
    """Log-log plot of step time vs N, with a slope-1 guide through the floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = table["sizes"]
    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    for name, row in table["cases"].items():
        points = [(s, t) for s, t in zip(sizes, row["median_s"]) if t is not None]
        if not points:
            continue
        xs, ys = zip(*points)
        slope = f" (slope {row['slope']:.2f})" if row["slope"] is not None else ""
        style = "k--" if name.startswith("floor") else "o-"
        ax.loglog(xs, ys, style, label=name + slope, markersize=4)
    floor = table["cases"].get("floor (p+g)")
    if floor and floor["median_s"][-1] is not None:
        ref = floor["median_s"][-1]
        ax.loglog(sizes, [ref * s / sizes[-1] for s in sizes], ":", color="grey", label="slope 1 guide")
    ax.set_xlabel("number of float32 parameters N")
    ax.set_ylabel("median jitted step time [s]")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
