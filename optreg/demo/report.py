"""What the demo writes: the printed table, ``results.json`` and PNG figures."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import jax
import numpy as np

#: Columns of the printed table: (header, key in :class:`Row`, format).
COLUMNS = (
    ("regularizer", "name", "{}"),
    ("test acc", "test_accuracy", "{:.2%}"),
    ("train loss", "train_loss", "{:.4f}"),
    ("nonzero", "nonzero_fraction", "{:.1%}"),
    ("compression", "compression_rate", "{:.1f}x"),
    ("seconds", "wall_seconds", "{:.1f}"),
)


@dataclass
class Row:
    """One trained regularizer. Metrics are ``None`` when the row could not be run
    (then ``status`` says why)."""

    name: str
    recipe: str
    test_accuracy: Optional[float] = None
    train_loss: Optional[float] = None
    nonzero_fraction: Optional[float] = None
    compression_rate: Optional[float] = None
    wall_seconds: Optional[float] = None
    status: str = "ok"
    hyperparameters: dict[str, Any] = field(default_factory=dict)


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return fmt.format(value)


def format_table(rows: Sequence[Row]) -> str:
    """The results as an aligned text table, with a note under it for every row that did not run."""
    cells = [[header for header, _, _ in COLUMNS]]
    cells += [[_cell(getattr(row, key), fmt) for _, key, fmt in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]

    def render(line: list[str]) -> str:
        first = line[0].ljust(widths[0])
        rest = [text.rjust(width) for text, width in zip(line[1:], widths[1:])]
        return "  ".join([first, *rest])

    lines = [render(cells[0]), "  ".join("-" * width for width in widths)]
    lines += [render(line) for line in cells[1:]]
    lines += [f"* {row.name}: {row.status}" for row in rows if row.status != "ok"]
    return "\n".join(lines)


def write_results(rows: Sequence[Row], path: Path) -> None:
    """``results.json``: a list with one object per row (every field of :class:`Row`)."""
    path.write_text(json.dumps([asdict(row) for row in rows], indent=2) + "\n")


def _flat_kernels(params: Any) -> np.ndarray:
    """All kernel entries (the regularised weights) in one float64 vector."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    kernels = [np.asarray(leaf, np.float64).ravel() for path, leaf in flat if "kernel" in jax.tree_util.keystr(path)]
    return np.concatenate(kernels) if kernels else np.zeros(0)


def plot_weight_histograms(trained: dict[str, Any], path: Path) -> None:
    """One panel per regularizer: histogram of all kernel weights (log counts), exact zeros counted apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(trained)
    columns = min(4, max(len(names), 1))
    rows = max(1, math.ceil(len(names) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.8 * rows), squeeze=False)
    everything = np.concatenate([_flat_kernels(p) for p in trained.values()]) if names else np.zeros(1)
    limit = float(np.max(np.abs(everything))) if everything.size else 1.0
    limit = limit if limit > 0 else 1.0
    bins = np.linspace(-limit, limit, 81)
    for axis, name in zip(axes.ravel(), names):
        weights = _flat_kernels(trained[name])
        zeros = int(np.sum(weights == 0.0))
        nonzero = weights[weights != 0.0]
        axis.hist(nonzero, bins=bins, color="tab:blue")
        if nonzero.size:
            axis.set_yscale("log")
        axis.set_title(f"{name}  ({zeros / max(weights.size, 1):.0%} exact zeros)", fontsize=9)
        axis.set_xlabel("kernel weight")
    for axis in axes.ravel()[len(names):]:
        axis.set_visible(False)
    figure.suptitle("Kernel weights after training (digits: MLP 64-300-100-10 and the small CNN)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
