"""``optreg.soft_share_compress`` with its defaults on data other than digits: tabular classification and regression.

The defaults were chosen on scikit-learn's digits (classification, 1 347 training images). This runs them,
unchanged, on the other datasets scikit-learn ships: breast cancer (binary, 30 features), wine (3 classes,
13 features) and diabetes (regression, 10 features; mean squared error on standardised targets). For every
dataset, MLP and split: train a baseline with Adam (learning rate 1e-3, batch 32; 3000 steps, 200 for diabetes,
whose networks overfit beyond that), compress it with
``soft_share_compress(loss_fn, params, batches, num_examples=N)`` and nothing else, and report the test metric
before and after (accuracy, or R² for regression) and the compression rate (Han et al.'s count).

    python benchmarks/soft_share_other_data.py                     # every case
    python benchmarks/soft_share_other_data.py --jobs 2 --datasets diabetes --seeds 0,1
    python benchmarks/soft_share_other_data.py --holdout 0.2 --early-stopping   # 20 % of it as validation=

Features (and the regression target) are standardised with the training split's mean and deviation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's optreg, also in worker processes
sys.path.insert(0, str(Path(__file__).resolve().parent))

from soft_share_robustness import run_jobs  # noqa: E402

#: name -> (scikit-learn loader, number of classes (0 for regression), the baseline's Adam steps). The diabetes
#: networks overfit within a few hundred steps (test R² 0.33-0.44 after 200, -0.31 to 0.23 after 3000).
DATASETS = {"breast_cancer": ("load_breast_cancer", 2, 3000), "wine": ("load_wine", 3, 3000),
            "diabetes": ("load_diabetes", 0, 200)}
WIDTHS = {"mlp-64-32": (64, 32), "mlp-128-64": (128, 64), "mlp-256": (256,)}
BATCH_SIZE, TEST_FRACTION = 32, 0.3


def load(dataset: str, seed: int) -> tuple[Any, Any, Any, Any]:
    """Standardised train/test arrays (stratified for classification)."""
    import numpy as np
    import sklearn.datasets
    from sklearn.model_selection import train_test_split

    loader, classes, _ = DATASETS[dataset]
    x, y = getattr(sklearn.datasets, loader)(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=TEST_FRACTION, random_state=seed,
                                                        stratify=y if classes else None)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-12
    x_train, x_test = ((a - mean) / std for a in (x_train, x_test))
    if classes:
        y_train, y_test = y_train.astype(np.int32), y_test.astype(np.int32)
    else:
        y_mean, y_std = y_train.mean(), y_train.std()
        y_train, y_test = ((a - y_mean) / y_std for a in (y_train, y_test))
    return x_train.astype(np.float32), y_train, x_test.astype(np.float32), y_test


def run_case(dataset: str, arch: str, seed: int, holdout: float = 0.0, early_stopping: bool = False) -> dict:
    """Baseline with Adam, then soft_share_compress with its defaults; one row. ``holdout``: the fraction of the
    training split set aside (neither trains on it); ``early_stopping``: pass it as ``validation=``."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from soft_share_robustness import minibatches

    import optreg

    _, classes, baseline_steps = DATASETS[dataset]
    x_train, y_train, x_test, y_test = load(dataset, seed)
    held = int(round(holdout * len(x_train)))
    x_held, y_held, x_train, y_train = x_train[:held], y_train[:held], x_train[held:], y_train[held:]

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            for width in WIDTHS[arch]:
                x = nn.relu(nn.Dense(width)(x))
            return nn.Dense(classes or 1)(x)

    model = MLP()
    params = model.init(jax.random.key(seed), x_train[:1])["params"]

    def loss_fn(p: Any, batch: Any) -> Any:
        out = model.apply({"params": p}, batch[0])
        if classes:
            return optax.softmax_cross_entropy_with_integer_labels(out, batch[1]).mean()
        return jnp.mean((out[:, 0] - batch[1]) ** 2)

    def metric(p: Any) -> float:
        out = np.asarray(model.apply({"params": p}, x_test))
        if classes:
            return float(np.mean(out.argmax(1) == y_test))
        return float(1.0 - np.mean((out[:, 0] - y_test) ** 2) / np.var(y_test))

    tx = optax.adam(1e-3)
    state = tx.init(params)
    step = jax.jit(lambda p, s, b: (lambda u, s: (optax.apply_updates(p, u), s))(
        *tx.update(jax.grad(loss_fn)(p, b), s, p)))
    stream = minibatches(x_train, y_train, BATCH_SIZE, seed)
    for _ in range(baseline_steps):
        params, state = step(params, state, next(stream))
    start = time.perf_counter()
    out = optreg.soft_share_compress(loss_fn, params, minibatches(x_train, y_train, BATCH_SIZE, seed + 100),
                                     num_examples=len(x_train),
                                     validation=[(x_held, y_held)] if early_stopping else None)
    return {
        "dataset": dataset, "arch": arch, "seed": seed, "metric": "accuracy" if classes else "R2",
        "params": sum(int(np.size(leaf)) for leaf in jax.tree.leaves(params)), "train": len(x_train),
        "baseline": metric(params), "compressed": metric(out.params), "retrained": metric(out.retrained),
        "rate": out.report.compression_rate, "nonzero": out.report.nonzero_fraction,
        "seconds": time.perf_counter() - start, "holdout": held, "early_stopping": early_stopping,
    }


def table(rows: Sequence[dict]) -> str:
    lines = ["| dataset | network | params | train examples | seed | metric | baseline | compressed | change | rate | "
             "nonzero | seconds |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        scale, unit = (100.0, " points") if r["metric"] == "accuracy" else (1.0, "")
        lines.append(
            f"| {r['dataset']} | {r['arch']} | {r['params']:,} | {r['train']} | {r['seed']} | {r['metric']} | "
            f"{r['baseline']:.4f} | {r['compressed']:.4f} | {scale * (r['compressed'] - r['baseline']):+.2f}{unit} | "
            f"{r['rate']:.1f}x | {r['nonzero']:.2%} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def _worker(job: tuple[str, str, int, float, bool]) -> dict:
    return run_case(*job)


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated datasets")
    parser.add_argument("--archs", default=",".join(WIDTHS), help="comma-separated networks")
    parser.add_argument("--seeds", default="0,1", help="comma-separated split seeds")
    parser.add_argument("--jobs", type=int, default=1, help="parallel worker processes")
    parser.add_argument("--holdout", type=float, default=0.0, help="fraction of the training split set aside")
    parser.add_argument("--early-stopping", action="store_true",
                        help="pass the set-aside examples to soft_share_compress as validation=")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON lines here")
    args = parser.parse_args(list(argv))
    jobs = [(dataset, arch, int(seed), args.holdout, args.early_stopping) for dataset in args.datasets.split(",")
            for seed in args.seeds.split(",") for arch in args.archs.split(",")]
    rows = run_jobs(_worker, jobs, args.jobs)
    rows.sort(key=lambda r: (list(DATASETS).index(r["dataset"]), list(WIDTHS).index(r["arch"]), r["seed"]))
    if args.out:
        args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print()
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
