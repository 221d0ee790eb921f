"""optreg benchmarks: every case side by side, interleaved, in one process.

    python benchmarks/run.py            # full run (several minutes)
    python benchmarks/run.py --quick    # under a minute
    python benchmarks/run.py --only "q=1|proximal" --skip scaling,compile,memory

Each phase builds and compiles its cases, warms them up, then runs rounds in
which every case executes once in a shuffled order. Reported per case: the
median step time, the median of the per-round ratios against its baseline
(what a user would write without optreg), the multiple of the memory-bound
floor (a jitted ``p + g`` over the same bytes), and the case's target.
Results go to ``benchmarks/results/<name>.json``; the scaling plot to
``benchmarks/results/scaling.png``. Timing targets are never asserted in the
test suite: shared machines are too noisy for that; read the ratios here.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import bench_compile
import bench_memory
import bench_scaling
import jax
from bench_cases import optimizer_cases, per_layer_cases
from bench_harness import Case, Result, describe_machine, load_average, machine_info, markdown_table, run_phase
from bench_soft_share import soft_share_cases
from bench_variants import matrix_cases, variant_cases

RESULTS = Path(__file__).resolve().parent / "results"
PHASES = ("decay", "per_layer", "soft_share", "variants", "matrix_variants", "scaling", "compile", "memory")


@dataclass(frozen=True)
class Settings:
    """Sizes and repetition counts of one mode."""

    n_main: int
    blocks: int
    layer_dims: tuple[int, int, int]
    n_soft: int
    ks: tuple[int, ...]
    rounds_main: int
    rounds_soft: int
    scaling_sizes: tuple[int, ...]
    rounds_scaling: int
    compile_features: tuple[int, ...]
    compile_repeats: int
    n_memory: int
    memory_ks: tuple[int, ...]
    min_time_s: float
    repeats: int = 3
    exclude: str = ""
    scaling_exclude: str = ""
    compile_exclude: str = ""
    memory_exclude: str = ""


MODES = {
    "full": Settings(
        n_main=4 * 2**20, blocks=6, layer_dims=(256, 1024, 2048), n_soft=2 * 2**20, ks=(5, 17, 65),
        rounds_main=40, rounds_soft=8, scaling_sizes=(100_000, 300_000, 1_000_000, 3_000_000, 10_000_000),
        rounds_scaling=15, compile_features=(784, 512, 512, 256, 10), compile_repeats=3, n_memory=2 * 2**20,
        memory_ks=(17, 65), min_time_s=0.02),
    "quick": Settings(
        n_main=4 * 2**20, blocks=6, layer_dims=(256, 1024, 2048), n_soft=2**19, ks=(17,),
        rounds_main=15, rounds_soft=4, scaling_sizes=(100_000, 1_000_000), rounds_scaling=4,
        compile_features=(784, 512, 512, 256, 10), compile_repeats=1, n_memory=2**19, memory_ks=(17,),
        min_time_s=0.005, repeats=2, exclude=r"exact", scaling_exclude=r"optax|q=1\.5|project|soft_share",
        compile_exclude=r"adamw|per_layer|proximal|project|soft_share",
        memory_exclude=r"exact|project_lq_ball\(q=1\.5\)|^proximal_lq\(q=0\.5\)"),
    "smoke": Settings(
        n_main=2**14, blocks=1, layer_dims=(16, 32, 64), n_soft=2**13, ks=(5,), rounds_main=3, rounds_soft=2,
        scaling_sizes=(2**12, 2**13), rounds_scaling=2, compile_features=(16, 8, 4), compile_repeats=1,
        n_memory=2**13, memory_ks=(5,), min_time_s=0.0, repeats=1),
}


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smaller rounds and fewer cases (under a minute)")
    mode.add_argument("--smoke", action="store_true", help="tiny sizes: checks the harness runs (used by the tests)")
    parser.add_argument("--name", help="results file stem (default: <backend>, <backend>_quick or smoke)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where the JSON and PNG go")
    parser.add_argument("--only", help="regular expression: run only cases whose name matches (re.search)")
    parser.add_argument("--skip", default="", help=f"comma-separated phases to skip, from {', '.join(PHASES)}")
    parser.add_argument("--rounds", type=int, help="override the number of rounds of every phase")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-round shuffles")
    parser.add_argument("--markdown", type=Path, help="also write the printed markdown report to this file")
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="measure nothing: print the markdown of a results file and redraw its scaling plot")
    args = parser.parse_args(argv)
    unknown = {p for p in args.skip.split(",") if p} - set(PHASES)
    if unknown:
        parser.error(f"--skip: unknown phases {sorted(unknown)}; choose from {', '.join(PHASES)}")
    return args


def main(argv: Optional[list[str]] = None) -> dict:
    args = parse_args(argv)
    if args.render:
        return render_file(args.render, args.markdown)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    settings = MODES[mode]
    skip = {p for p in args.skip.split(",") if p}
    pattern = re.compile(args.only) if args.only else None

    def selector(exclude: str) -> Callable[[str], bool]:
        dropped = re.compile(exclude) if exclude else None
        return lambda name: (pattern is None or bool(pattern.search(name))) and not (
            dropped is not None and dropped.search(name))

    select_name = selector(settings.exclude)

    def select(case: Case) -> bool:
        return select_name(case.name)

    def rounds(default: int) -> int:
        return args.rounds if args.rounds is not None else default

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    phase_seconds: dict[str, float] = {}
    mark = [started]

    def lap(phase: str) -> None:
        now = time.perf_counter()
        phase_seconds[phase] = round(now - mark[0], 1)
        mark[0] = now
        log(f"  ({phase}: {phase_seconds[phase]} s)")

    info = machine_info()
    name = args.name or (f"{info['backend']}" if mode == "full" else "smoke" if mode == "smoke"
                         else f"{info['backend']}_quick")
    report: dict[str, Any] = {
        "name": name, "mode": mode, "command": " ".join(["benchmarks/run.py", *(argv or sys.argv[1:])]),
        "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": info, "settings": settings.__dict__, "groups": {}, "cases": [],
    }
    groups: list[tuple[str, Callable[[], list[Case]], int]] = [
        ("decay", lambda: optimizer_cases(settings.n_main), settings.rounds_main),
        ("per_layer", lambda: per_layer_cases(settings.blocks, settings.layer_dims), settings.rounds_main),
        ("soft_share", lambda: soft_share_cases(settings.n_soft, settings.ks), settings.rounds_soft),
        ("variants", lambda: variant_cases(settings.n_main), settings.rounds_main),
        ("matrix_variants", lambda: matrix_cases(settings.n_main), settings.rounds_main),
    ]
    for phase, make_cases, default_rounds in groups:
        if phase in skip:
            continue
        cases = _with_baselines(make_cases(), select)
        if not cases:
            continue
        log(f"phase {phase}: {len(cases)} cases, {rounds(default_rounds)} rounds")
        results = run_phase(cases, rounds(default_rounds), settings.min_time_s, args.seed, log, settings.repeats)
        report["cases"] += [r.to_json() for r in results]
        report["groups"].setdefault(results[0].group, []).extend(r.name for r in results)
        jax.clear_caches()
        lap(phase)
    if "scaling" not in skip:
        report["scaling"] = bench_scaling.run_scaling(
            list(settings.scaling_sizes), rounds(settings.rounds_scaling), settings.min_time_s, args.seed,
            lambda case: selector(settings.scaling_exclude)(case.name), log, settings.repeats)
        lap("scaling")
    if "compile" not in skip:
        log("phase compile")
        report["compile"] = bench_compile.measure_compile_times(
            settings.compile_features, repeats=settings.compile_repeats, select=selector(settings.compile_exclude),
            log=log)
        lap("compile")
    if "memory" not in skip:
        log("phase memory")
        report["memory"] = bench_memory.memory_report(
            settings.n_memory, settings.memory_ks, selector(settings.memory_exclude), log=log)
        lap("memory")
    report["phase_seconds"] = phase_seconds
    info["load_average_end"] = load_average()
    report["wall_s"] = round(time.perf_counter() - started, 1)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    if report.get("scaling", {}).get("cases"):
        png = args.out_dir / ("scaling.png" if mode == "full" else f"{name}_scaling.png")
        bench_scaling.plot_scaling(report["scaling"], png, short_machine(info))
        report["scaling"]["plot"] = png.name
    path = args.out_dir / f"{name}.json"
    path.write_text(json.dumps(_finite(report), indent=1, default=str, allow_nan=False) + "\n", encoding="utf-8")
    text = render_markdown(report)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n", encoding="utf-8")
    log(f"wrote {path} ({report['wall_s']} s)")
    return report


def render_file(path: Path, markdown: Optional[Path]) -> dict:
    """Re-renders a results file (e.g. after a change of the report's layout) without measuring."""
    report = json.loads(path.read_text(encoding="utf-8"))
    scaling = report.get("scaling", {})
    if scaling.get("cases"):
        bench_scaling.add_slopes_over_floor(scaling)
        png = path.parent / scaling.get("plot", f"{report['name']}_scaling.png")
        bench_scaling.plot_scaling(scaling, png, short_machine(report["machine"]))
    text = render_markdown(report)
    print(text)
    if markdown:
        markdown.write_text(text + "\n", encoding="utf-8")
    return report


def short_machine(info: dict) -> str:
    """A plot title: device, cores, versions."""
    return (f"{info['device_kind']} ({info['cpu_model']}, {info['cpus_usable']} cores), "
            f"jax {info['jax']}, optax {info['optax']}")


def _finite(value: Any) -> Any:
    """The report with every NaN/inf replaced by None, so the file is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _with_baselines(cases: list[Case], select: Callable[[Case], bool]) -> list[Case]:
    """The selected cases plus the baselines and floors their ratios need."""
    by_name = {c.name: c for c in cases}
    wanted = {c.name for c in cases if select(c)}
    for name in list(wanted):
        case = by_name[name]
        while case.baseline and case.baseline not in wanted and case.baseline in by_name:
            wanted.add(case.baseline)
            case = by_name[case.baseline]
        for other in (by_name[name].baseline, by_name[name].floor):
            if other in by_name:
                wanted.add(other)
    return [c for c in cases if c.name in wanted]


def render_markdown(report: dict) -> str:
    """The whole report as markdown: machine, one table per group, scaling, compile, memory."""
    info = report["machine"]
    lines = [f"Machine: {describe_machine(info)}; load average at end {info.get('load_average_end')}.",
             f"Mode `{report['mode']}`, wall time {report['wall_s']} s. Each round visits the cases in a new random "
             f"order and times each {report['settings']['repeats']}x back to back, keeping the fastest; ratios are "
             "medians of the per-round ratios (IQR in brackets); 'x floor' is the step time over a jitted `p + g` "
             "on the same bytes; "
             "'XLA bytes/param' is the compiled step's `cost_analysis()` bytes accessed per parameter "
             "(noise-free; the floor reads 8 and writes 4); 'temp bytes/param' is its temporary buffer "
             "(`memory_analysis()`), which on CPU is fresh, page-faulted memory every step once it is "
             "larger than glibc's 32 MB mmap threshold.", ""]
    for group, names in report["groups"].items():
        results = [_result(c) for c in report["cases"] if c["name"] in names and c["group"] == group]
        lines += [f"### {group}", "", markdown_table(results), ""]
    if report.get("scaling", {}).get("cases"):
        lines += ["### scaling (median step time; log-log slope 1 = linear)", "",
                  bench_scaling.scaling_markdown(report["scaling"]), ""]
    if "compile" in report:
        lines += ["### compile time of a Flax train step", "", bench_compile.compile_markdown(report["compile"]), ""]
    if "memory" in report:
        lines += ["### memory", "", bench_memory.memory_markdown(report["memory"]), ""]
    return "\n".join(lines)


def _result(data: dict) -> Result:
    fields = dict(data)
    for key, value in fields.items():
        if value is None and key.endswith(("_s", "ratio", "_p25", "_p75", "_per_param")):
            fields[key] = float("nan")
    return Result(**fields)


if __name__ == "__main__":
    main()
