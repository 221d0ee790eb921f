"""The soft weight-sharing pipeline on digits: retrain a baseline with the mixture prior, quantise, count bits.

Ullrich, Meeds & Welling (2017)'s recipe: start from a trained network, retrain
with ``soft_share_prior`` (17 components, a zero component with π_0 = 0.99,
Gamma hyperpriors, τ warmed up), merge and snap the weights, and count the
storage as Han et al. (2016) do.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import numpy as np
import optax

from optreg.compression import CompressionReport, Quantized, compression_report, quantize
from optreg.demo.data import Split
from optreg.demo.training import MLP, accuracy, train
from optreg.masks import decay_mask
from optreg.soft_share import MixtureState, soft_share_prior


class SoftShareResult(NamedTuple):
    """Everything the demo row and the notebook's pictures need.

    ``weights_*`` are the flattened quantised-leaf weights (float32 numpy) for
    histograms and the weight-vs-quantised scatter; ``initial_state`` is the
    mixture before retraining, ``state`` after.
    """

    params: Any
    quantized: Quantized
    report: CompressionReport
    baseline_accuracy: float
    retrained_accuracy: float
    quantized_accuracy: float
    initial_state: MixtureState
    state: MixtureState
    weights_before: np.ndarray
    weights_after: np.ndarray
    weights_quantized: np.ndarray
    history: dict[str, list[float]]


#: The recipe's defaults (tuned on the default digits split; see the README).
DEFAULT_EPOCHS = 40
QUICK_EPOCHS = 15
#: The prior's settings for the demo (narrow components from the start; see the README for the trade-off).
DEFAULT_PRIOR_OPTIONS: dict[str, Any] = {"init_std": 0.03, "learning_rates": (3e-4, 3e-3, 3e-3)}


def _flat(params: Any, mask: Any) -> np.ndarray:
    """The quantised leaves' weights, flattened (all leaves when ``mask`` is None)."""
    selected = [True] * len(jax.tree.leaves(params)) if mask is None else jax.tree.leaves(mask(params))
    return np.concatenate(
        [np.asarray(leaf, np.float32).ravel() for leaf, keep in zip(jax.tree.leaves(params), selected) if keep]
    )


def soft_share_optimizer(
    n_train: int,
    steps: int,
    *,
    tau: float = 0.005,
    learning_rate: float = 1e-3,
    warmup_fraction: float = 0.2,
    final_boost: float = 1.0,
    boost_fraction: float = 0.25,
    **prior_options: Any,
) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
    """(prior, full optimizer): ``chain(soft_share_prior, adam)`` with τ/N_train warmed up linearly.

    Args:
      n_train: training-set size N (the data loss is a mean over a batch, so the prior is scaled by 1/N).
      steps: total number of update steps (the warm-up is ``warmup_fraction`` of them).
      tau: Ullrich et al.'s τ; the strength is τ / N.
      learning_rate: Adam step size for the weights.
      warmup_fraction: fraction of the steps over which the strength rises linearly from 0.
      final_boost: over the last ``boost_fraction`` of the steps the strength rises linearly to
        ``final_boost`` times its plateau (1: no boost), pushing the last undecided weights onto components.
      boost_fraction: see ``final_boost``.
      **prior_options: passed to :func:`optreg.soft_share_prior`.
    """
    plateau = tau / n_train
    warmup = max(1, int(warmup_fraction * steps))
    boost_start = max(warmup, int((1.0 - boost_fraction) * steps))
    strength = optax.join_schedules(
        [optax.linear_schedule(0.0, plateau, warmup), optax.constant_schedule(plateau),
         optax.linear_schedule(plateau, final_boost * plateau, max(1, steps - boost_start))],
        [warmup, boost_start],
    )
    prior = soft_share_prior(17, strength, **prior_options)
    return prior, optax.chain(prior, optax.adam(learning_rate))


def run_soft_share(
    data: Split,
    baseline_params: Any,
    *,
    epochs: Optional[int] = None,
    quick: bool = False,
    tau: float = 0.02,
    learning_rate: float = 1e-3,
    final_boost: float = 1.0,
    batch_size: int = 64,
    seed: int = 0,
    quantize_biases: bool = True,
    on_epoch: Optional[Callable[[int, dict[str, float]], None]] = None,
    **prior_options: Any,
) -> SoftShareResult:
    """Retrains ``baseline_params`` with the soft weight-sharing prior, quantises, and reports.

    Args:
      data: the digits split (:func:`optreg.demo.data.load_digits_split`).
      baseline_params: the trained MLP's ``params`` (64-300-100-10).
      epochs: retraining epochs (default ``DEFAULT_EPOCHS``, or ``QUICK_EPOCHS`` with ``quick``).
      quick: a shorter run for tests.
      tau: Ullrich et al.'s τ; the prior's strength is τ / N_train, warmed up linearly.
      learning_rate: Adam step size for the weights.
      final_boost: strength multiplier reached at the end (see :func:`soft_share_optimizer`).
      batch_size, seed: as in :func:`optreg.demo.training.train`.
      quantize_biases: put the biases under the prior and quantise them too (default); with
        False only kernels are (``optreg.decay_mask``) and biases are counted at 32 bits each.
      on_epoch: progress callback ``(epoch, metrics)``.
      **prior_options: passed to :func:`optreg.soft_share_prior` (e.g. ``mode="exact"``); they
        override ``DEFAULT_PRIOR_OPTIONS``.

    Returns:
      A :class:`SoftShareResult`.
    """
    prior_options = {**DEFAULT_PRIOR_OPTIONS, **prior_options}
    if epochs is None:
        epochs = QUICK_EPOCHS if quick else DEFAULT_EPOCHS
    model = MLP()
    n_train = data.x_train.shape[0]
    steps = epochs * (n_train // batch_size)
    mask = None if quantize_biases else decay_mask
    prior, tx = soft_share_optimizer(n_train, steps, tau=tau, learning_rate=learning_rate, mask=mask,
                                     final_boost=final_boost, **prior_options)
    initial_state = prior.init(baseline_params)
    result = train(tx, data, model=model, params=baseline_params, epochs=epochs, batch_size=batch_size,
                   seed=seed, on_epoch=on_epoch)
    state = result.opt_state[0]
    quantized = quantize(result.params, state, mask=mask)
    report = compression_report(result.params, quantized, mask=mask)
    return SoftShareResult(
        params=result.params,
        quantized=quantized,
        report=report,
        baseline_accuracy=accuracy(model, baseline_params, data.x_test, data.y_test),
        retrained_accuracy=result.test_accuracy,
        quantized_accuracy=accuracy(model, quantized.params, data.x_test, data.y_test),
        initial_state=initial_state,
        state=state,
        weights_before=_flat(baseline_params, mask),
        weights_after=_flat(result.params, mask),
        weights_quantized=_flat(quantized.params, mask),
        history=result.history,
    )
