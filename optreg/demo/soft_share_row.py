"""The demo's ``soft_share`` and ``soft_share_cnn`` rows: :func:`optreg.demo.soft_share.run_soft_share`
(``optreg.soft_share_compress`` with its defaults) on the trained baseline, and the mixture figure."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import numpy as np

DESCRIPTION = ("optreg.soft_share_compress(loss, baseline, batches, num_examples=N) with its defaults: retrain under "
               "soft_share_prior, snap, fine-tune the quantised network; dead units pruned (MLP)")
DESCRIPTION_CNN = ("optreg.soft_share_compress(loss, baseline_cnn, batches, num_examples=N) with its defaults "
                   "(conv kernels counted with 8-bit gaps)")


class Outcome(NamedTuple):
    """What the row reports; ``result`` is the demo's ``SoftShareResult``."""

    params: Any
    test_accuracy: float
    train_loss: float
    compression_rate: float
    wall_seconds: float
    result: Any


def availability() -> str:
    """'' when the rows can run, else why they cannot."""
    import optreg

    for name in ("soft_share_compress", "compression_report"):
        if not hasattr(optreg, name):
            return f"unavailable: optreg.{name} does not exist in this installation"
    return ""


def hyperparameters() -> dict[str, Any]:
    """The defaults of ``optreg.soft_share_compress`` (what the rows use)."""
    import optreg

    options = {}
    for name, parameter in inspect.signature(optreg.soft_share_compress).parameters.items():
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name not in ("num_examples", "callback", "mask"):
            value = parameter.default
            options[name] = list(value) if isinstance(value, tuple) else value
    prior = inspect.signature(optreg.soft_share_compress).parameters["prior"].default
    options["prior"] = {key: list(value) if value else value for key, value in prior._asdict().items()}
    options["defaults"] = ("num_components 8, zero_mixing 0.997, weight_decay 0.01 / N, steps max(1000, 60 epochs), "
                           "finetune_steps max(1000, 80 epochs)")
    return options


def run(data: Any, baseline_params: Any, *, model: Any = None, epochs: Optional[int] = None, quick: bool = False,
        seed: int = 0, callback: Optional[Callable[[str, int, int], None]] = None) -> Outcome:
    """Compresses ``baseline_params`` and reports the *stored* (quantised) network."""
    import jax.numpy as jnp

    from optreg.demo.soft_share import run_soft_share
    from optreg.demo.training import MLP, cross_entropy

    model = model or MLP()
    result = run_soft_share(data, baseline_params, model=model, epochs=epochs, quick=quick, seed=seed,
                            callback=callback)
    loss = float(cross_entropy(model, result.params, jnp.asarray(data.x_train), jnp.asarray(data.y_train)))
    return Outcome(result.params, float(result.quantized_accuracy), loss, float(result.report.compression_rate),
                   result.seconds, result)


def plot(outcome: Outcome, path: Path, title: str = "soft weight sharing") -> None:
    """Ullrich et al.'s picture: the retrained weights with the learned mixture over them, and before vs after."""
    import jax.numpy as jnp
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import optreg

    result = outcome.result
    normalised = result.normalised_after
    limit = float(max(np.max(np.abs(normalised)), 1e-3))
    grid = jnp.linspace(-limit, limit, 1001, dtype=jnp.float32)
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    left.hist(normalised, bins=np.linspace(-limit, limit, 201), density=True, color="tab:blue", alpha=0.6,
              label="weights after retraining (÷ their layer's scale)")
    left.plot(grid, np.asarray(optreg.mixture_density(grid, result.compressed.state)), color="tab:red",
              label="learned mixture")
    left.set_yscale("log")
    left.set_ylim(bottom=1e-3)
    left.set_xlabel("normalised weight")
    left.set_title(f"{title}: weights and the learned mixture prior")
    left.legend(fontsize=8)

    before, after = result.weights_before, result.weights_after
    step = max(1, before.size // 20000)
    right.scatter(before[::step], after[::step], s=1, alpha=0.3, color="tab:blue", label="retrained")
    right.scatter(before[::step], result.weights_quantized[::step], s=1, alpha=0.3, color="tab:red",
                  label="stored (quantised, fine-tuned)")
    right.set_xlabel("baseline weight")
    right.set_ylabel("weight after soft sharing")
    right.set_title(f"{result.report.nonzero_fraction:.1%} non-zero, {outcome.compression_rate:.1f}x compression")
    right.legend(fontsize=8, markerscale=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
