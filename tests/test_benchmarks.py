"""Smoke tests of the benchmark harness (benchmarks/run.py): it runs end to end and writes valid JSON.

No timing is asserted here, ever: speed is read from the benchmark's own report.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    """The benchmark modules, imported from benchmarks/ (not an installed package)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("optreg_benchmarks_run", BENCHMARKS / "run.py")
        run = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = run  # dataclasses look their module up
        spec.loader.exec_module(run)
        import bench_harness
        import bench_memory

        yield run, bench_harness, bench_memory
    finally:
        sys.path.remove(str(BENCHMARKS))
        sys.modules.pop("optreg_benchmarks_run", None)


def _reject_non_finite(token):
    raise ValueError(f"{token} is not valid JSON")


def test_smoke_run_writes_valid_json(bench, tmp_path):
    run, _, _ = bench
    run.main(["--smoke", "--only", r"q=2\) \+ adam", "--skip", "per_layer,soft_share,compile,memory",
              "--out-dir", str(tmp_path),
              "--markdown", str(tmp_path / "report.md")])
    data = json.loads((tmp_path / "smoke.json").read_text(), parse_constant=_reject_non_finite)
    for key in ("platform", "cpu_count", "jax", "optax", "backend", "device_kind"):
        assert data["machine"][key], key
    rows = {row["name"]: row for row in data["cases"]}
    # the selected case brought its baseline, the baseline's baseline and the floor along
    assert {"floor (p+g)", "adam", "optax.add_decayed_weights + adam", "add_decayed_weights_q(q=2) + adam"} <= set(rows)
    for row in rows.values():
        assert row["status"] in ("ok", "skipped", "error")
        assert row["status"] == "ok", row["reason"]
        assert row["median_s"] > 0 and len(row["times_s"]) == data["settings"]["rounds_main"]
    q2 = rows["add_decayed_weights_q(q=2) + adam"]
    assert q2["status"] == "ok" and q2["ratio"] > 0 and q2["floor_ratio"] > 0
    assert q2["target"] == 1.05 and isinstance(q2["passed"], bool)
    assert rows["floor (p+g)"]["floor_ratio"] == pytest.approx(1.0)
    scaling = data["scaling"]
    assert len(scaling["sizes"]) == 2 and scaling["cases"]["add_decayed_weights_q(q=2) + adam"]["slope"] is not None
    assert (tmp_path / "smoke_scaling.png").stat().st_size > 0
    assert "| add_decayed_weights_q(q=2) + adam |" in (tmp_path / "report.md").read_text()
    # a results file can be re-rendered without measuring anything
    run.main(["--render", str(tmp_path / "smoke.json"), "--markdown", str(tmp_path / "again.md")])
    assert (tmp_path / "again.md").read_text() == (tmp_path / "report.md").read_text()


def test_a_missing_or_broken_case_is_reported_not_raised(bench):
    _, harness, _ = bench

    def missing():
        raise harness.Unavailable("optreg.nothing does not exist")

    def broken():
        raise ValueError("bad shapes")

    x = jnp.ones(8)
    good = jax.jit(lambda: x + 1)
    cases = [
        harness.Case("good", "g", build=lambda: good),
        harness.Case("missing", "g", build=missing, baseline="good"),
        harness.Case("broken", "g", build=broken, baseline="good"),
        harness.Case("relative", "g", build=lambda: good, baseline="good", target=10.0),
    ]
    results = {r.name: r for r in harness.run_phase(cases, rounds=2, min_time_s=0.0, log=lambda _: None)}
    assert results["good"].status == "ok" and len(results["good"].times_s) == 2
    assert results["missing"].status == "skipped" and "optreg.nothing" in results["missing"].reason
    assert results["broken"].status == "error" and "bad shapes" in results["broken"].reason
    assert results["relative"].passed is True and math.isfinite(results["relative"].ratio)
    json.dumps([r.to_json() for r in results.values()], allow_nan=False)


def test_loglog_slope_of_a_linear_and_a_quadratic_law(bench):
    _, harness, _ = bench
    sizes = [1e5, 1e6, 1e7]
    assert harness.fit_loglog_slope(sizes, [3e-9 * n for n in sizes]) == pytest.approx(1.0)
    assert harness.fit_loglog_slope(sizes, [1e-15 * n**2 for n in sizes]) == pytest.approx(2.0)


def test_hlo_check_sees_an_n_by_k_array(bench):
    _, _, memory = bench
    n, k = 1000, 7
    w, mu = jnp.ones(n), jnp.arange(k, dtype=jnp.float32)
    outer = jax.jit(lambda w, mu: jnp.exp(w[:, None] - mu)).lower(w, mu).compile().as_text()
    elementwise = jax.jit(lambda w, mu: jnp.exp(w - mu[0])).lower(w, mu).compile().as_text()
    assert memory.largest_entry_array(outer) == n * k
    assert memory.largest_entry_array(elementwise) == n
