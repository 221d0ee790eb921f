"""A sharded train step on 8 devices vs the same step on one device: an overhead check.

    python benchmarks/sharding.py            # hidden width 2048, batch 512, 20 rounds
    python benchmarks/sharding.py --quick    # hidden width 1024, batch 256, 8 rounds

The step is a full Flax train step (MLP forward and backward, optreg transform,
Adam), jitted with its parameters, optimizer state and batch laid out
FSDP-style over a one-axis mesh (``examples/sharded_training.py`` has the
rule), for the same global model and batch size on 1 device and on 8.

On a machine without 8 accelerators the 8 devices are simulated
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``, set in a subprocess
when this process already has fewer devices). Simulated devices share the same
cores, so the 8-device step cannot be faster: its ratio to the 1-device step
measures what partitioning, collectives and 8-way dispatch cost, not a
speed-up. The number that matters for optreg is the other one: each
transform's step time relative to plain Adam *on the same layout*. If the
transforms shard cleanly, that relative cost is about the same on 1 and on 8
devices; a transform that gathered its parameters would stand out.

Timing uses ``bench_harness.run_phase``: all cases are compiled and warmed up,
then every round runs each case once in a shuffled order; ratios are medians
of per-round ratios. ``measure()`` returns the report for ``benchmarks/run.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import numpy as np
from bench_harness import Case, Result, Unavailable, describe_machine, machine_info, run_phase

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from sharded_training import AXIS, fsdp_shardings  # noqa: E402  (one FSDP rule for example and benchmark)

NUM_DEVICES = 8
LEARNING_RATE = 1e-3
LAYOUTS = (1, NUM_DEVICES)
GROUP = "sharding"


@dataclass(frozen=True)
class Settings:
    inputs: int
    hidden: int
    classes: int
    batch: int
    rounds: int
    min_time_s: float


MODES = {
    "full": Settings(inputs=784, hidden=2048, classes=10, batch=512, rounds=20, min_time_s=0.05),
    "quick": Settings(inputs=256, hidden=1024, classes=10, batch=256, rounds=8, min_time_s=0.02),
    "smoke": Settings(inputs=16, hidden=64, classes=8, batch=32, rounds=2, min_time_s=0.0),
}


# ----------------------------------------------------------------------------- the transforms timed


def _registry_transforms() -> dict[str, tuple[Callable[[Any], Any], bool]]:
    """name -> (abstract params -> optreg transform, or None for plain Adam; placed after the learning rate?),
    one row per transform in optreg's registry (the same list the tests and sharding checks use)."""
    from optreg._registry import TRANSFORMS as REGISTRY

    rows: dict[str, tuple[Callable[[Any], Any], bool]] = {"adam": (lambda params: None, False)}
    for entry in REGISTRY:
        rows[entry.name] = (lambda params, entry=entry: entry.make(params), entry.placement == "last")
    return rows


TRANSFORMS = _registry_transforms()


# ----------------------------------------------------------------------------- the sharded step


def _model(settings: Settings) -> Any:
    import flax.linen as nn

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            x = nn.relu(nn.Dense(settings.hidden)(x))
            x = nn.relu(nn.Dense(settings.hidden)(x))
            return nn.Dense(settings.classes)(x)

    return MLP()


def build_step(transform: str, num_devices: int, settings: Settings) -> Callable[[], Any]:
    """A zero-argument callable running one donated, sharded train step (state carried between calls)."""
    import optax

    make, after_step = TRANSFORMS[transform]
    devices = jax.devices()[:num_devices]
    if len(devices) < num_devices:
        raise Unavailable(f"needs {num_devices} devices, this process has {jax.device_count()}")
    mesh = jax.make_mesh((num_devices,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)
    model = _model(settings)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((settings.batch, settings.inputs), dtype=np.float32)
    y = rng.integers(0, settings.classes, settings.batch).astype(np.int32)
    abstract = jax.eval_shape(model.init, jax.random.key(0), x[:1])
    param_shardings = fsdp_shardings(abstract, mesh)
    params = jax.jit(model.init, out_shardings=param_shardings)(jax.random.key(0), x[:1])
    extra = make(abstract)
    adam = optax.adam(LEARNING_RATE)
    tx = adam if extra is None else optax.chain(adam, extra) if after_step else optax.chain(extra, adam)
    state_shardings = fsdp_shardings(jax.eval_shape(tx.init, params), mesh)
    state = jax.jit(tx.init, out_shardings=state_shardings)(params)
    batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    xs, ys = jax.device_put(x, batch), jax.device_put(y, batch)

    def train(p: Any, s: Any, inputs: jax.Array, labels: jax.Array) -> tuple[Any, Any, jax.Array]:
        def loss_fn(q: Any) -> jax.Array:
            return optax.softmax_cross_entropy_with_integer_labels(model.apply(q, inputs), labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    step = jax.jit(
        train,
        in_shardings=(param_shardings, state_shardings, batch, batch),
        out_shardings=(param_shardings, state_shardings, replicated),
        donate_argnums=(0, 1),
    )
    carried = [params, state]

    def run() -> jax.Array:
        carried[0], carried[1], loss = step(carried[0], carried[1], xs, ys)
        return loss

    return run


def _name(transform: str, num_devices: int) -> str:
    return f"{transform} @ {num_devices} device{'s' if num_devices > 1 else ''}"


def cases(settings: Settings, names: Optional[list[str]] = None) -> list[Case]:
    """Every transform on 1 and on 8 devices; each 8-device case's baseline is its 1-device case."""
    n_params = settings.inputs * settings.hidden + settings.hidden**2 + settings.hidden * settings.classes
    n_params += 2 * settings.hidden + settings.classes
    out = []
    for transform in names or list(TRANSFORMS):
        for devices in LAYOUTS:
            out.append(Case(
                name=_name(transform, devices),
                group=GROUP,
                build=lambda t=transform, d=devices: build_step(t, d, settings),
                baseline=_name(transform, 1) if devices > 1 else None,
                n_params=n_params,
                note=f"Flax MLP {settings.inputs}-{settings.hidden}-{settings.hidden}-{settings.classes}, "
                     f"global batch {settings.batch}",
            ))
    return out


# ----------------------------------------------------------------------------- measuring and reporting


def _relative(numerator: Result, denominator: Result) -> float:
    if numerator.status != "ok" or denominator.status != "ok" or not denominator.times_s:
        return float("nan")
    return statistics.median(a / b for a, b in zip(numerator.times_s, denominator.times_s))


def summarise(results: list[Result], settings: Settings) -> list[dict]:
    """One row per transform: times on 1 and 8 devices, their ratio, and the cost relative to Adam on each."""
    by_name = {r.name: r for r in results}
    rows = []
    for transform in TRANSFORMS:
        one, many = by_name.get(_name(transform, 1)), by_name.get(_name(transform, NUM_DEVICES))
        if one is None or many is None:
            continue
        adam_one, adam_many = by_name.get(_name("adam", 1)), by_name.get(_name("adam", NUM_DEVICES))
        rows.append({
            "transform": transform,
            "status": one.status if one.status != "ok" else many.status,
            "reason": one.reason or many.reason,
            "one_device_s": one.median_s,
            "eight_devices_s": many.median_s,
            "eight_over_one": many.ratio,
            "eight_over_one_iqr": [many.ratio_p25, many.ratio_p75],
            "samples_per_s_one": settings.batch / one.median_s if one.status == "ok" else float("nan"),
            "samples_per_s_eight": settings.batch / many.median_s if many.status == "ok" else float("nan"),
            "vs_adam_one": _relative(one, adam_one) if adam_one else float("nan"),
            "vs_adam_eight": _relative(many, adam_many) if adam_many else float("nan"),
        })
    return rows


def measure_here(mode: str = "quick", rounds: Optional[int] = None, names: Optional[list[str]] = None,
                 log: Callable[[str], None] = print) -> dict:
    """Measures in this process, which must have at least 8 devices."""
    if jax.device_count() < NUM_DEVICES:
        raise Unavailable(f"this process has {jax.device_count()} device(s); {NUM_DEVICES} are needed")
    settings = MODES[mode]
    results = run_phase(cases(settings, names), rounds or settings.rounds, settings.min_time_s, log=log)
    return {
        "mode": mode,
        "settings": settings.__dict__,
        "machine": machine_info(),
        "simulated": jax.default_backend() == "cpu",
        "cases": [r.to_json() for r in results],
        "rows": summarise(results, settings),
    }


def measure(mode: str = "quick", rounds: Optional[int] = None, names: Optional[list[str]] = None,
            log: Callable[[str], None] = print) -> dict:
    """The report, measured here if this process has 8 devices, else in a subprocess with 8 simulated CPU devices.

    This is the entry point for ``benchmarks/run.py``: it works whatever the
    caller's own device count.
    """
    if jax.device_count() >= NUM_DEVICES:
        return measure_here(mode, rounds, names, log)
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={NUM_DEVICES}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    command = [sys.executable, str(Path(__file__).resolve()), "--mode", mode, "--json-stdout"]
    if rounds is not None:
        command += ["--rounds", str(rounds)]
    if names:
        command += ["--only", ",".join(names)]
    log(f"running {' '.join(command[1:])} with {NUM_DEVICES} simulated CPU devices")
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False,
                          cwd=Path(__file__).resolve().parent)
    if done.returncode != 0:
        raise RuntimeError(f"the sharding benchmark subprocess failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _fmt(value: Any, pattern: str) -> str:
    return pattern.format(value) if isinstance(value, (int, float)) and np.isfinite(value) else "-"


def markdown(report: dict) -> str:
    """The rows as a markdown table, with the machine and what the numbers mean."""
    settings = report["settings"]
    kind = "simulated CPU devices sharing the same cores" if report.get("simulated") else "devices"
    lines = [
        f"Sharded vs single-device train step ({NUM_DEVICES} {kind}); Flax MLP {settings['inputs']}-"
        f"{settings['hidden']}-{settings['hidden']}-{settings['classes']}, global batch {settings['batch']}, "
        f"FSDP layout, {report['mode']} mode. Machine: {describe_machine(report['machine'])}.",
        "",
        "| transform | 1 device | 8 devices | 8 / 1 (IQR) | samples/s 1 → 8 | vs Adam, 1 device | vs Adam, 8 devices |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        if row["status"] != "ok":
            lines.append(f"| {row['transform']} | - | - | - | - | - | {row['status']}: {row['reason']} |")
            continue
        low, high = row["eight_over_one_iqr"]
        lines.append(
            f"| {row['transform']} | {_fmt(1e3 * row['one_device_s'], '{:.1f} ms')} | "
            f"{_fmt(1e3 * row['eight_devices_s'], '{:.1f} ms')} | "
            f"{_fmt(row['eight_over_one'], '{:.2f}')} ({_fmt(low, '{:.2f}')}-{_fmt(high, '{:.2f}')}) | "
            f"{_fmt(row['samples_per_s_one'], '{:.0f}')} → {_fmt(row['samples_per_s_eight'], '{:.0f}')} | "
            f"{_fmt(row['vs_adam_one'], '{:.3f}')} | {_fmt(row['vs_adam_eight'], '{:.3f}')} |"
        )
    if report.get("simulated"):
        lines += ["", "Simulated devices share the cores: '8 / 1' is an overhead check (partitioning, collectives, "
                      "dispatch), not a speed-up. 'vs Adam' is the step time over plain Adam's on the same layout."]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=sorted(MODES), default="full")
    parser.add_argument("--quick", action="store_true", help="same as --mode quick")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--only", help="comma-separated transforms (adam is always added as the reference)")
    parser.add_argument("--json-stdout", action="store_true", help="print the report as one JSON line (no table)")
    parser.add_argument("--json", type=Path, help="also write the report to this file")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else args.mode
    names = None
    if args.only:
        names = ["adam"] + [n for n in args.only.split(",") if n and n != "adam"]
        unknown = set(names) - set(TRANSFORMS)
        if unknown:
            parser.error(f"--only: unknown transforms {sorted(unknown)}; choose from {', '.join(TRANSFORMS)}")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    report = measure(mode, args.rounds, names, log)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    if args.json_stdout:
        print(json.dumps(report, default=str))
    else:
        print(markdown(report))
    return report


if __name__ == "__main__":
    main()
