"""Interleaved timing of jitted steps: cases, rounds, medians and per-round ratios.

Every case is a zero-argument callable that runs one jitted step (its state
carried between calls, donated where a real train step would donate it) and
returns something to block on. All cases of a phase are compiled and warmed
up first; then, in each round, every case runs once in a freshly shuffled
order. A case's time is the median over rounds; its ratio against a baseline
is the median of the per-round ratios, so slow drifts of a shared machine
(other processes, frequency changes) cancel out instead of biasing one case.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import random
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import jax
import numpy as np

Step = Callable[[], Any]

#: A step at least this long is timed once per round (its noise is relatively small already).
LONG_STEP_S = 0.25


class Unavailable(Exception):
    """Raised by a case builder when what it measures does not exist (yet)."""


@contextlib.contextmanager
def reported(row: dict) -> Iterator[None]:
    """Runs the body for one row of a table; a failure becomes the row's status instead of a crash.

    ``Unavailable`` / import / attribute errors mark the row "skipped (not available)", anything
    else "error" (with its traceback on stderr), so one broken case never hides the others.
    """
    try:
        yield
    except (Unavailable, ImportError, AttributeError) as error:
        row.update(status="skipped", reason=f"not available: {error}")
    except Exception as error:  # noqa: BLE001 - report, keep going
        row.update(status="error", reason=f"{type(error).__name__}: {error}")
        traceback.print_exc()


@dataclass
class Case:
    """One timed row.

    Attributes:
      name: row label, unique within the run.
      group: the table this row belongs to (cases of a group share ``n`` and usually a baseline).
      build: ``() -> Step``; may raise :class:`Unavailable`, ``ImportError`` or ``AttributeError``
        (the row is then reported as skipped, not as a crash).
      baseline: name of the case the ratio is taken against (same group), or None.
      floor: name of the memory-bound floor case (``p + g`` over the same bytes), or None.
      target: the ratio (vs ``baseline``) the case must not exceed, or None.
      target_source: where the target comes from (kept in the JSON, not shown in the tables).
      n_params: number of float32 parameters (for the table).
      note: free text shown in the JSON.
    """

    name: str
    group: str
    build: Callable[[], Step]
    baseline: Optional[str] = None
    floor: Optional[str] = None
    target: Optional[float] = None
    target_source: str = ""
    n_params: int = 0
    note: str = ""


@dataclass
class Result:
    """What the run measured for one :class:`Case`."""

    name: str
    group: str
    n_params: int
    status: str = "ok"  # "ok", "skipped", "error"
    reason: str = ""
    baseline: Optional[str] = None
    target: Optional[float] = None
    target_source: str = ""
    note: str = ""
    compile_s: float = float("nan")
    inner: int = 1
    repeats: int = 1
    times_s: list[float] = field(default_factory=list)
    median_s: float = float("nan")
    p25_s: float = float("nan")
    p75_s: float = float("nan")
    ratio: float = float("nan")
    ratio_p25: float = float("nan")
    ratio_p75: float = float("nan")
    floor_ratio: float = float("nan")
    passed: Optional[bool] = None
    xla_bytes_per_param: float = float("nan")
    xla_temp_bytes_per_param: float = float("nan")
    xla_flops_per_param: float = float("nan")
    xla_transcendentals_per_param: float = float("nan")

    def to_json(self) -> dict:
        out = dict(self.__dict__)
        for key, value in out.items():
            if isinstance(value, float) and not math.isfinite(value):
                out[key] = None
        return out


def _block(value: Any) -> None:
    jax.block_until_ready(value)


def _timed(step: Step, inner: int) -> float:
    start = time.perf_counter()
    out = None
    for _ in range(inner):
        out = step()
    _block(out)
    return (time.perf_counter() - start) / inner


def _quantile(values: list[float], q: float) -> float:
    return float(np.quantile(np.asarray(values), q)) if values else float("nan")


def run_phase(
    cases: list[Case],
    rounds: int,
    min_time_s: float,
    seed: int = 0,
    log: Callable[[str], None] = print,
    repeats: int = 1,
) -> list[Result]:
    """Builds, compiles and warms up every case, then times them interleaved.

    Args:
      cases: the cases of this phase (all kept alive together).
      rounds: number of interleaved rounds.
      min_time_s: each measurement repeats the step ``inner`` times so that it
        lasts at least this long (set per case at warm-up, so tiny steps are not
        dominated by timer and dispatch jitter).
      seed: seed of the per-round shuffles.
      log: progress printer.
      repeats: measurements per case and round; the round keeps the fastest.
        Interference from other processes only ever adds time, so on a shared
        machine the minimum of a few back-to-back runs is the steadier estimate.
        Steps longer than ``LONG_STEP_S`` are measured once per round.

    Returns:
      One :class:`Result` per case, in the order of ``cases``.
    """
    results = {
        c.name: Result(c.name, c.group, c.n_params, baseline=c.baseline, target=c.target,
                       target_source=c.target_source, note=c.note)
        for c in cases
    }
    steps: dict[str, Step] = {}
    for case in cases:
        result = results[case.name]
        try:
            start = time.perf_counter()
            step = case.build()
            _block(step())  # compile + first run
            result.compile_s = time.perf_counter() - start
            once = _timed(step, 1)
            _timed(step, 1)
            result.inner = max(1, math.ceil(min_time_s / max(once, 1e-7)))
            result.repeats = 1 if once * result.inner > LONG_STEP_S else max(1, repeats)
            steps[case.name] = step
            cost = getattr(step, "cost", None) or {}
            if case.n_params:
                result.xla_bytes_per_param = cost.get("bytes accessed", float("nan")) / case.n_params
                result.xla_temp_bytes_per_param = cost.get("temp bytes", float("nan")) / case.n_params
                result.xla_flops_per_param = cost.get("flops", float("nan")) / case.n_params
                result.xla_transcendentals_per_param = cost.get("transcendentals", float("nan")) / case.n_params
        except (Unavailable, ImportError, AttributeError) as error:
            result.status, result.reason = "skipped", f"not available: {error}"
            log(f"  skipped {case.name}: {error}")
        except Exception as error:  # noqa: BLE001 - one broken case must not hide the others
            result.status, result.reason = "error", f"{type(error).__name__}: {error}"
            log(f"  ERROR in {case.name}: {type(error).__name__}: {error}")
            traceback.print_exc(file=sys.stderr)
    order = list(steps)
    shuffler = random.Random(seed)
    for _ in range(rounds):
        shuffler.shuffle(order)
        for name in order:
            result = results[name]
            result.times_s.append(min(_timed(steps[name], result.inner) for _ in range(result.repeats)))
    steps.clear()
    _summarise(cases, results, rounds)
    return [results[c.name] for c in cases]


def _per_round_ratio(numerator: Result, denominator: Result) -> list[float]:
    return [a / b for a, b in zip(numerator.times_s, denominator.times_s)]


def _summarise(cases: list[Case], results: dict[str, Result], rounds: int) -> None:
    for case in cases:
        result = results[case.name]
        if result.status != "ok":
            continue
        result.median_s = statistics.median(result.times_s) if result.times_s else float("nan")
        result.p25_s, result.p75_s = _quantile(result.times_s, 0.25), _quantile(result.times_s, 0.75)
        base = results.get(case.baseline) if case.baseline else None
        if base is not None and base.status == "ok" and base.times_s:
            ratios = _per_round_ratio(result, base)
            result.ratio = statistics.median(ratios)
            result.ratio_p25, result.ratio_p75 = _quantile(ratios, 0.25), _quantile(ratios, 0.75)
        elif case.baseline:
            result.reason = (result.reason + "; " if result.reason else "") + f"baseline {case.baseline} not measured"
        floor = results.get(case.floor) if case.floor else None
        if floor is not None and floor.status == "ok" and floor.times_s:
            result.floor_ratio = statistics.median(_per_round_ratio(result, floor))
        if case.target is not None and math.isfinite(result.ratio):
            result.passed = bool(result.ratio <= case.target)


def machine_info() -> dict:
    """Where the numbers came from: hardware, load, software versions, JAX backend."""
    import optax

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "jax": jax.__version__,
        "jaxlib": getattr(__import__("jaxlib"), "__version__", "?"),
        "optax": optax.__version__,
        "numpy": np.__version__,
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
    }
    try:
        import flax

        info["flax"] = flax.__version__
    except ImportError:
        info["flax"] = None
    try:
        import optreg

        info["optreg"] = optreg.__version__
    except ImportError:
        info["optreg"] = None
    info["cpu_model"] = _cpu_model()
    info["memory_gib"] = _memory_gib()
    info["load_average_start"] = load_average()
    return info


def load_average() -> Optional[list[float]]:
    """The 1/5/15-minute load averages (a busy shared machine shows here), or None."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> Optional[float]:
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemTotal"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def describe_machine(info: dict) -> str:
    """One line for the table caption."""
    cpus = info["cpus_usable"]
    load = info.get("load_average_start")
    return (
        f"{info['device_kind']} ({info['backend']}), {info['cpu_model']}, {cpus} usable cores, "
        f"{info.get('memory_gib')} GiB RAM; jax {info['jax']}, optax {info['optax']}, "
        f"python {info['python']}; load average at start {load}"
    )


def format_seconds(value: float) -> str:
    if not math.isfinite(value):
        return "-"
    if value >= 1.0:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.2f} ms"
    return f"{value * 1e6:.0f} µs"


def _format_target(result: Result) -> str:
    if result.target is None:
        return ""
    if result.target < 1.0:
        text = f">= {1 / result.target:.0f}x faster"
    else:
        text = f"<= {result.target:.2f}"
    return text


def _format_verdict(result: Result) -> str:
    if result.status != "ok":
        return result.status
    if result.passed is None:
        return ""
    return "pass" if result.passed else "**FAIL**"


def markdown_table(results: list[Result]) -> str:
    """One markdown table for a group of results."""
    lines = [
        "| case | N | median | ratio (IQR) | vs baseline | x floor | XLA bytes/param | temp bytes/param "
        "| target | verdict |",
        "|---|---:|---:|---:|---|---:|---:|---:|---|---|",
    ]
    for r in results:
        if r.status != "ok":
            lines.append(f"| {r.name} | {r.n_params:,} | - | - | {r.baseline or ''} | - | - | - | "
                         f"{_format_target(r)} | {r.status}: {r.reason} |")
            continue
        if math.isfinite(r.ratio):
            ratio = f"{r.ratio:.3f} ({r.ratio_p25:.2f}-{r.ratio_p75:.2f})"
            if r.ratio < 0.5:
                ratio += f" = {1 / r.ratio:.0f}x faster"
        else:
            ratio = "-"
        floor = f"{r.floor_ratio:.2f}" if math.isfinite(r.floor_ratio) else "-"
        traffic = f"{r.xla_bytes_per_param:.0f}" if math.isfinite(r.xla_bytes_per_param) else "-"
        temp = f"{r.xla_temp_bytes_per_param:.1f}" if math.isfinite(r.xla_temp_bytes_per_param) else "-"
        lines.append(
            f"| {r.name} | {r.n_params:,} | {format_seconds(r.median_s)} | {ratio} | {r.baseline or ''} | "
            f"{floor} | {traffic} | {temp} | {_format_target(r)} | {_format_verdict(r)} |"
        )
    return "\n".join(lines)


def fit_loglog_slope(sizes: list[float], times: list[float]) -> float:
    """Least-squares slope of log(time) against log(size); 1.0 means linear growth."""
    pairs = [(math.log(s), math.log(t)) for s, t in zip(sizes, times) if t and t > 0 and math.isfinite(t)]
    if len(pairs) < 2:
        return float("nan")
    x, y = np.array(pairs).T
    return float(np.polyfit(x, y, 1)[0])
