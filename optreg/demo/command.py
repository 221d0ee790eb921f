"""``optreg demo``: every regularizer trained on scikit-learn's digits, one table.

The model is a Flax MLP 64-300-100-10, trained with Adam (learning rate 1e-3,
batch 64) on a fixed, seeded 75/25 split of ``load_digits``. Each row changes
only the regularizer; the strengths below were chosen so that every row stays
close to the baseline's accuracy while its effect is visible (smaller norms,
exact zeros, or a small codebook). All weight decays use optreg's convention
Ω = (λ/q)·Σ|w|^q and skip biases (``optreg.decay_mask``). The last two rows
train a small CNN (``optreg.demo.training.CNN``) and compress it the same way
as the MLP's ``soft_share`` row: ``optreg.soft_share_compress`` with its defaults.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

LEARNING_RATE = 1e-3
BATCH_SIZE = 64
DEFAULT_EPOCHS = 30
QUICK_EPOCHS = 2
#: soft_share retraining + fine-tuning steps with --quick (a smoke run).
QUICK_SHARE_STEPS = 100  # = optreg.demo.soft_share.QUICK_STEPS (not imported: keeps --help free of jax)

#: λ of every row (see :func:`recipes`); printed by ``--help`` and stored in results.json.
L2_DECAY = 1e-3
ADAMW_DECAY = 1e-1
L1_DECAY = 3e-1
LQ_DECAY = 1e-1
PER_LAYER_DECAYS = {"Dense_0/kernel": 3e-3, "Dense_1/kernel": 1e-3, "Dense_2/kernel": 1e-4}


class Recipe(NamedTuple):
    """How one row is built: its name, a readable description, its λ's and its optimizer."""

    name: str
    description: str
    hyperparameters: dict[str, Any]
    build: Callable[[], Any]


def recipes() -> list[Recipe]:
    """The demo's rows, in table order. ``soft_share`` is run by :mod:`optreg.demo.soft_share_row`."""
    import optax

    import optreg

    adam = optax.adam(LEARNING_RATE)

    def proximal(q: float, lam: float) -> Callable[[], Any]:
        return lambda: optax.chain(adam, optreg.proximal_lq(LEARNING_RATE, lam, q=q, mask=optreg.decay_mask))

    return [
        Recipe("baseline", "optax.adam(1e-3)", {}, lambda: adam),
        Recipe(
            "l2",
            "chain(add_decayed_weights_q(λ, mask=decay_mask), adam)  # coupled, Adam + L2",
            {"weight_decay": L2_DECAY, "q": 2},
            lambda: optax.chain(optreg.add_decayed_weights_q(L2_DECAY, mask=optreg.decay_mask), adam),
        ),
        Recipe(
            "adamw",
            "chain(scale_by_adam, add_decayed_weights_q(λ, mask=decay_mask), scale_by_learning_rate)  # decoupled",
            {"weight_decay": ADAMW_DECAY, "q": 2},
            lambda: optax.chain(
                optax.scale_by_adam(),
                optreg.add_decayed_weights_q(ADAMW_DECAY, mask=optreg.decay_mask),
                optax.scale_by_learning_rate(LEARNING_RATE),
            ),
        ),
        Recipe(
            "l1_prox",
            "chain(adam, proximal_lq(1e-3, λ, q=1, mask=decay_mask))  # soft threshold",
            {"weight_decay": L1_DECAY, "q": 1},
            proximal(1.0, L1_DECAY),
        ),
        Recipe(
            "lq_prox",
            "chain(adam, proximal_lq(1e-3, λ, q=0.5, mask=decay_mask))  # half threshold",
            {"weight_decay": LQ_DECAY, "q": 0.5},
            proximal(0.5, LQ_DECAY),
        ),
        Recipe(
            "per_layer",
            "chain(per_layer_decay({Dense_0: λ0, Dense_1: λ1, Dense_2: λ2}), adam)",
            {"weight_decays": dict(PER_LAYER_DECAYS), "q": 2},
            lambda: optax.chain(optreg.per_layer_decay(PER_LAYER_DECAYS), adam),
        ),
    ]


ROW_NAMES = ("baseline", "l2", "adamw", "l1_prox", "lq_prox", "per_layer", "soft_share", "baseline_cnn",
             "soft_share_cnn")


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` for integers >= ``minimum``."""
    wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {value}")
        return value

    return parse


def _row_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in ROW_NAMES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown row(s) {', '.join(unknown) or repr(text)}; "
            f"choose a comma-separated subset of {','.join(ROW_NAMES)}"
        )
    return names


_PER_LAYER_TEXT = ", ".join(f"{key.split('/')[0]} {value:g}" for key, value in PER_LAYER_DECAYS.items())
EPILOG = f"""\
rows (Adam, learning rate {LEARNING_RATE:g}, batch {BATCH_SIZE}; λ in optreg's convention (λ/q)·Σ|w|^q;
biases are never decayed):
  baseline    no regularization
  l2          coupled L2 before Adam, λ = {L2_DECAY:g}
  adamw       decoupled decay between scale_by_adam and the learning rate, λ = {ADAMW_DECAY:g}
  l1_prox     proximal L1 (soft threshold lr·λ) after Adam, λ = {L1_DECAY:g}
  lq_prox     proximal L1/2 (half threshold) after Adam, λ = {LQ_DECAY:g}
  per_layer   coupled L2 with one λ per Dense layer: {_PER_LAYER_TEXT}
  soft_share  optreg.soft_share_compress on the baseline with its defaults (retrain under
              soft_share_prior, snap, fine-tune the quantised network), dead units pruned
  baseline_cnn    a small CNN (3x3 convs 16 and 32, avg pooling, dense 64), Adam
  soft_share_cnn  optreg.soft_share_compress on baseline_cnn (conv kernels: 8-bit gaps)

outputs in --out: results.json (one object per row) and PNG figures
(weight_histograms.png; soft_share_mixture.png / soft_share_cnn_mixture.png when they run).
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Registers ``demo`` on the ``optreg`` command's subparsers."""
    parser = subparsers.add_parser(
        "demo",
        help="train every regularizer on scikit-learn's digits and print a table",
        description=(
            "Train a Flax MLP 64-300-100-10 on scikit-learn's load_digits (fixed seeded split) once per\n"
            "regularizer and print test accuracy, train loss, nonzero fraction, compression rate\n"
            "(optreg.compression_report) and wall seconds."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_EPOCHS} epochs per row and {QUICK_SHARE_STEPS} retraining + {QUICK_SHARE_STEPS} "
        "fine-tuning steps of soft sharing (seconds, not minutes; the numbers are not meaningful)",
    )
    parser.add_argument(
        "--epochs",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help=f"epochs per row (default {DEFAULT_EPOCHS}; {QUICK_EPOCHS} with --quick)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("optreg-demo"), metavar="DIR",
        help="directory for results.json and the PNG figures (default ./optreg-demo; created if missing)",
    )
    parser.add_argument(
        "--seed", type=_int_at_least(0), default=0, metavar="S",
        help="seed of the train/test split, the initialisation and the shuffling (default 0)",
    )
    parser.add_argument(
        "--rows", type=_row_list, default=list(ROW_NAMES), metavar="NAMES",
        help="comma-separated subset of rows to run (default: all); soft_share compresses the baseline "
        "and soft_share_cnn the baseline_cnn (trained first even when not listed)",
    )
    parser.add_argument(
        "--share-epochs",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help="soft-sharing epochs (retraining + fine-tuning, split 3:4) after the baseline (default: "
        "soft_share_compress's own: max(1000 steps, 60 epochs) + max(1000 steps, 80 epochs))",
    )
    parser.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(handler=run_command)
    return parser


def run_command(args: argparse.Namespace) -> int:
    """The ``optreg demo`` handler: runs, prints the table, writes ``--out``."""
    try:
        import flax  # noqa: F401
        import sklearn  # noqa: F401
        import tqdm  # noqa: F401
    except ImportError as error:
        raise SystemExit(f"optreg demo needs the demo extras: pip install 'optreg[demo]' ({error})") from None
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise SystemExit(f"optreg demo: error: argument --out: {str(out)!r} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    epochs = args.epochs or (QUICK_EPOCHS if args.quick else DEFAULT_EPOCHS)
    rows = run_demo(
        epochs=epochs,
        seed=args.seed,
        names=args.rows,
        quick=args.quick,
        share_epochs=args.share_epochs,
        out=out,
        figures=not args.no_figures,
        progress=not args.no_progress,
    )
    from optreg.demo.report import format_table

    print(format_table(rows))
    print(f"\nresults and figures in {out}/")
    return 0


# ---------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------


def _compression_rate(params: Any) -> float:
    """Storage of the weights as they are (no quantisation), counted by :func:`optreg.compression_report`."""
    import optreg

    return float(optreg.compression_report(params).compression_rate)


def run_demo(
    *,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    names: Optional[list[str]] = None,
    quick: bool = False,
    share_epochs: Optional[int] = None,
    out: Optional[Path] = None,
    figures: bool = True,
    progress: bool = True,
) -> list:
    """Trains the chosen rows and returns their :class:`optreg.demo.report.Row` objects.

    ``share_epochs`` is the soft-sharing length in epochs (default: ``soft_share_compress``'s own,
    ``QUICK_SHARE_STEPS`` steps per phase with ``quick``). Writes ``results.json`` (and figures) into
    ``out`` when given.
    """
    from tqdm.auto import tqdm

    from optreg.demo import report
    from optreg.demo.data import load_digits_split
    from optreg.demo.training import train

    names = list(ROW_NAMES) if names is None else names
    data = load_digits_split(seed)
    chosen = [recipe for recipe in recipes() if recipe.name in names]
    bar = tqdm(total=_planned_epochs(names, epochs, share_epochs, quick, len(data.x_train)), desc="optreg demo",
               unit="epoch", disable=not progress, leave=False)

    def on_epoch(label: str) -> Callable[[int, dict[str, float]], None]:
        def update(epoch: int, metrics: dict[str, float]) -> None:
            bar.set_postfix_str(f"{label} acc {metrics['test_accuracy']:.3f}")
            bar.update(1)

        return update

    def on_step(phase: str, step: int, total: int) -> None:
        bar.update(BATCH_SIZE / len(data.x_train))

    rows: list[report.Row] = []
    trained: dict[str, Any] = {}

    def fit(name: str, tx: Any, model: Any = None) -> Any:
        bar.set_description(name)
        return train(tx, data, model=model, epochs=epochs, batch_size=BATCH_SIZE, seed=seed, on_epoch=on_epoch(name))

    for recipe in chosen:
        row = report.Row(recipe.name, recipe.description, hyperparameters=recipe.hyperparameters)
        rows.append(row)
        start = time.perf_counter()
        result = fit(recipe.name, recipe.build())
        _fill(row, result.test_accuracy, result.train_loss, result.params, time.perf_counter() - start)
        trained[recipe.name] = result.params

    rows += _compressed_rows(names, data, trained, fit, share_epochs, quick, seed, out if figures else None,
                             on_step)
    bar.close()
    rows.sort(key=lambda row: ROW_NAMES.index(row.name))

    if out is not None:
        report.write_results(rows, out / "results.json")
        shown = {name: params for name, params in trained.items() if name in names}
        if figures and shown:
            report.plot_weight_histograms(shown, out / "weight_histograms.png")
    return rows


def _compressed_rows(names: list[str], data: Any, trained: dict[str, Any], fit: Callable[..., Any],
                     share_epochs: Optional[int], quick: bool, seed: int, figures: Optional[Path],
                     on_step: Callable[[str, int, int], None]) -> list:
    """The ``soft_share``, ``baseline_cnn`` and ``soft_share_cnn`` rows (baselines trained when needed)."""
    import optax

    from optreg.demo import report, soft_share_row
    from optreg.demo.training import CNN

    share = soft_share_row.availability()
    rows = []
    for name in ("soft_share", "baseline_cnn", "soft_share_cnn"):
        if name not in names:
            continue
        cnn = name.endswith("cnn")
        if cnn and "baseline_cnn" not in trained:
            start = time.perf_counter()
            result = fit("baseline_cnn", optax.adam(LEARNING_RATE), CNN())
            trained["baseline_cnn"] = result.params
            if name == "baseline_cnn":
                row = report.Row(name, "optax.adam(1e-3) on the small CNN", hyperparameters={})
                _fill(row, result.test_accuracy, result.train_loss, result.params, time.perf_counter() - start)
                rows.append(row)
        if name == "baseline_cnn":
            continue
        row = report.Row(name, soft_share_row.DESCRIPTION_CNN if cnn else soft_share_row.DESCRIPTION,
                         hyperparameters=soft_share_row.hyperparameters() if not share else {})
        rows.append(row)
        if share:
            row.status = share
            continue
        if not cnn and "baseline" not in trained:
            trained["baseline"] = fit("baseline (for soft_share)", recipes()[0].build()).params
        outcome = soft_share_row.run(data, trained["baseline_cnn" if cnn else "baseline"], model=CNN() if cnn else None,
                                     epochs=share_epochs, quick=quick, seed=seed, callback=on_step)
        _fill(row, outcome.test_accuracy, outcome.train_loss, outcome.params, outcome.wall_seconds,
              outcome.compression_rate)
        trained[name] = outcome.params
        if figures is not None:
            soft_share_row.plot(outcome, figures / f"{name}_mixture.png", "CNN" if cnn else "MLP")
    return rows


def _fill(row: Any, accuracy: float, loss: float, params: Any, seconds: float,
          rate: Optional[float] = None) -> None:
    from optreg.demo.training import nonzero_fraction

    row.test_accuracy, row.train_loss, row.wall_seconds = accuracy, loss, seconds
    row.nonzero_fraction = nonzero_fraction(params)
    row.compression_rate = _compression_rate(params) if rate is None else rate


def _planned_epochs(names: list[str], epochs: int, share_epochs: Optional[int], quick: bool, n_train: int) -> float:
    """The progress bar's length: training epochs plus the soft-sharing steps in epochs."""
    per_epoch = n_train / BATCH_SIZE
    if share_epochs is not None:
        share = float(share_epochs)
    elif quick:
        share = 2 * QUICK_SHARE_STEPS / per_epoch
    else:
        share = (max(1000, 60 * math.ceil(per_epoch)) + max(1000, 80 * math.ceil(per_epoch))) / per_epoch
    trained = [name for name in names if not name.startswith("soft_share")]
    trained += [needed for needed, by in (("baseline", "soft_share"), ("baseline_cnn", "soft_share_cnn"))
                if by in names and needed not in names]
    return epochs * len(trained) + share * sum(name.startswith("soft_share") for name in names)
