"""The demo's ``soft_share`` row: an adapter over :func:`optreg.demo.soft_share.run_soft_share`
(retrain the baseline with ``optreg.soft_share_prior``, quantise, count bits) and its mixture figure."""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import jax.numpy as jnp
import numpy as np

DESCRIPTION = ("retrain baseline with chain(soft_share_prior(8, τ/N warm-up), adam), quantize, prune dead units, "
               "compression_report")


class Outcome(NamedTuple):
    """What the row reports; ``result`` is the pipeline's ``SoftShareResult``."""

    params: Any
    test_accuracy: float
    train_loss: float
    compression_rate: float
    wall_seconds: float
    result: Any


def _pipeline() -> Any:
    try:
        module = importlib.import_module("optreg.demo.soft_share")
    except ImportError:
        return None
    return module if hasattr(module, "run_soft_share") else None


def availability() -> str:
    """'' when the row can run, else why it cannot."""
    import optreg

    for name in ("soft_share_prior", "quantize", "compression_report"):
        if not hasattr(optreg, name):
            return f"unavailable: optreg.{name} does not exist in this installation (issue 3)"
    if _pipeline() is None:
        return "unavailable: optreg.demo.soft_share.run_soft_share (issue 3) does not exist"
    return ""


def default_epochs(quick: bool) -> int:
    """Retraining epochs of the pipeline (its own defaults)."""
    pipeline = _pipeline()
    if pipeline is None:
        return 0
    return int(pipeline.QUICK_EPOCHS if quick else pipeline.DEFAULT_EPOCHS)


def hyperparameters() -> dict[str, Any]:
    pipeline = _pipeline()
    if pipeline is None:
        return {}
    import inspect

    defaults = inspect.signature(pipeline.run_soft_share).parameters
    options = {name: (list(value) if isinstance(value, tuple) else value)
               for name, value in pipeline.DEFAULT_PRIOR_OPTIONS.items()}
    return {
        "num_components": defaults["num_components"].default,
        "tau": defaults["tau"].default,
        "learning_rate": defaults["learning_rate"].default,
        "strength": "tau / N_train, linear warm-up over the first 20% of the steps",
        **options,
        "kl_threshold": defaults["kl_threshold"].default,
        "dead_units_pruned": defaults["prune"].default,
    }


def run(
    data: Any,
    baseline_params: Any,
    *,
    epochs: int,
    seed: int,
    on_epoch: Optional[Callable[[int, dict[str, float]], None]] = None,
) -> Outcome:
    """Retrains from ``baseline_params`` for ``epochs`` and reports the *quantised* network."""
    from optreg.demo.training import MLP, cross_entropy

    start = time.perf_counter()
    result = _pipeline().run_soft_share(data, baseline_params, epochs=epochs, seed=seed, on_epoch=on_epoch)
    seconds = time.perf_counter() - start
    params = result.quantized.params
    loss = float(cross_entropy(MLP(), params, jnp.asarray(data.x_train), jnp.asarray(data.y_train)))
    return Outcome(params, float(result.quantized_accuracy), loss, float(result.report.compression_rate),
                   seconds, result)


def plot(outcome: Outcome, path: Path) -> None:
    """Ullrich et al.'s picture: the weights with the learned mixture over them, and before vs after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import optreg

    result = outcome.result
    after, before = result.weights_after, result.weights_before
    limit = float(max(np.max(np.abs(after)), np.max(np.abs(before)), 1e-3))
    grid = jnp.linspace(-limit, limit, 1001, dtype=jnp.float32)
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4))

    left.hist(after, bins=np.linspace(-limit, limit, 201), density=True, color="tab:blue", alpha=0.6,
              label="weights after retraining")
    left.plot(grid, np.asarray(optreg.mixture_density(grid, result.initial_state)), color="tab:gray",
              linestyle="--", label="mixture at start")
    left.plot(grid, np.asarray(optreg.mixture_density(grid, result.state)), color="tab:red", label="learned mixture")
    left.set_yscale("log")
    left.set_ylim(bottom=1e-2)
    left.set_xlabel("weight")
    left.set_title("soft weight sharing: weights and the learned mixture prior")
    left.legend(fontsize=8)

    step = max(1, before.size // 20000)
    right.scatter(before[::step], after[::step], s=1, alpha=0.3, color="tab:blue", label="retrained")
    right.scatter(before[::step], result.weights_quantized[::step], s=1, alpha=0.3, color="tab:red",
                  label="quantised")
    for value in result.quantized.codebook:
        right.axhline(float(value), color="gray", linewidth=0.5)
    right.set_xlabel("baseline weight")
    right.set_ylabel("weight after soft sharing")
    right.set_title(f"{result.report.distinct_values} distinct values, {outcome.compression_rate:.1f}x compression")
    right.legend(fontsize=8, markerscale=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
