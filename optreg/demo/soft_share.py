"""The soft weight-sharing pipeline on digits: retrain a baseline with the mixture prior, quantise, count bits.

Ullrich, Meeds & Welling (2017)'s recipe: start from a trained network, retrain
with ``soft_share_prior`` (a zero component with a fixed large π_0, Gamma
hyperpriors, τ warmed up), merge and snap the weights, and count the storage as
Han et al. (2016) do. Adapted to the digits MLP (see ``DEFAULT_PRIOR_OPTIONS``):
8 components, so that every layer's codebook index fits in 3 bits; Gamma
hyperpriors strong enough to keep every non-zero component narrow (σ ≈ 0.03)
and the zero component very narrow (σ_0 ≈ 0.002 is reached), because a wide
component collects weights that quantisation then moves far; 400 short epochs
(21 steps each) with faster mixture learning rates than the paper's. After
quantisation, :func:`prune_dead_units` removes the weights of hidden units that
can no longer affect the output — a lossless step (same function on every input).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optreg._masks import decay_mask
from optreg.compression import DEFAULT_KL_THRESHOLD, CompressionReport, Quantized, compression_report, quantize
from optreg.demo.data import Split
from optreg.demo.training import MLP, accuracy, train
from optreg.soft_share import MixtureState, soft_share_prior


class SoftShareResult(NamedTuple):
    """Everything the demo row and the notebook's pictures need.

    ``weights_*`` are the flattened quantised-leaf weights (float32 numpy) for
    histograms and the weight-vs-quantised scatter; ``initial_state`` is the
    mixture before retraining, ``state`` after. ``quantized.params`` is the
    stored network (quantised, then dead units pruned when asked);
    ``report`` counts it and ``report_unpruned`` the quantised network before
    pruning (the same function, so the same accuracy).
    """

    params: Any
    quantized: Quantized
    report: CompressionReport
    report_unpruned: CompressionReport
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
DEFAULT_EPOCHS = 400
QUICK_EPOCHS = 80
DEFAULT_TAU = 0.01
#: Zero component + 7: a layer's entries then take at most 8 values (with the filler zero) -> 3-bit indices.
DEFAULT_NUM_COMPONENTS = 8
#: The prior's settings for the demo, passed to :func:`optreg.soft_share_prior`:
#: π_0 = 0.994 fixed; initial σ = 0.05; Adam rates (means, log-precisions, mixing logits);
#: Gamma(α, β) on the precisions with mode (α − 1)/β ≈ 1111 (σ ≈ 0.03) and α large enough that no
#: component widens to collect the weights between the others; Gamma on the zero precision with mode
#: ≈ 5·10^4 (σ_0 ≈ 0.0045), so that weights snapped to zero were already near zero.
DEFAULT_PRIOR_OPTIONS: dict[str, Any] = {
    "zero_mixing": 0.994,
    "init_std": 0.05,
    "learning_rates": (1e-3, 1e-2, 1e-2),
    "precision_prior": (10000.0, 9.0),
    "zero_precision_prior": (5000.0, 0.1),
}


def _flat(params: Any, mask: Any) -> np.ndarray:
    """The quantised leaves' weights, flattened (all leaves when ``mask`` is None)."""
    selected = [True] * len(jax.tree.leaves(params)) if mask is None else jax.tree.leaves(mask(params))
    return np.concatenate(
        [np.asarray(leaf, np.float32).ravel() for leaf, keep in zip(jax.tree.leaves(params), selected) if keep]
    )


def prune_dead_units(params: Any) -> Any:
    """Zeroes the weights of hidden units that cannot affect the MLP's output (lossless).

    For the ReLU MLP of :mod:`optreg.demo.training` (``Dense_0 … Dense_{n-1}``,
    kernels of shape (in, out)), hidden unit u of layer l is *dead* when

    * its outgoing weights ``Dense_{l+1}/kernel[u, :]`` are all 0 (its output is
      never used), or
    * its incoming weights ``Dense_l/kernel[:, u]`` are all 0 and its bias is
      <= 0 (its output is relu(bias) = 0 for every input).

    A dead unit's incoming weights, bias and outgoing weights are set to 0,
    until no unit changes. The network computes exactly the same function on
    every input (ReLU(0) = 0 and 0·h = 0); only zeros are added, so the values
    stay in the codebook. Input units (pixels) are left alone.

    Args:
      params: the MLP's ``params`` (e.g. ``Quantized.params``).

    Returns:
      The same structure with the dead units' weights zeroed (same dtypes).
    """
    names = [f"Dense_{i}" for i in range(sum(str(key).startswith("Dense_") for key in params))]
    if not names or any(name not in params for name in names):
        raise ValueError(
            f"prune_dead_units expects the demo MLP's params (Dense_0 … Dense_n), got keys {list(params)}."
        )
    kernels = [np.array(params[name]["kernel"]) for name in names]
    biases = [np.array(params[name]["bias"]) for name in names]
    changed = True
    while changed:
        changed = False
        for layer in range(len(names) - 1):
            unused = ~np.any(kernels[layer + 1] != 0, axis=1)
            silent = ~np.any(kernels[layer] != 0, axis=0) & (biases[layer] <= 0)
            dead = unused | silent
            touched = (np.any(kernels[layer][:, dead] != 0) or np.any(biases[layer][dead] != 0)
                       or np.any(kernels[layer + 1][dead, :] != 0))
            if touched:
                kernels[layer][:, dead] = 0
                biases[layer][dead] = 0
                kernels[layer + 1][dead, :] = 0
                changed = True
    out = dict(params)
    for name, kernel, bias in zip(names, kernels, biases):
        out[name] = {**params[name], "kernel": jnp.asarray(kernel), "bias": jnp.asarray(bias)}
    return out


def soft_share_optimizer(
    n_train: int,
    steps: int,
    *,
    tau: float = DEFAULT_TAU,
    num_components: int = DEFAULT_NUM_COMPONENTS,
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
      num_components: K, the zero component included.
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
    prior = soft_share_prior(num_components, strength, **prior_options)
    return prior, optax.chain(prior, optax.adam(learning_rate))


def run_soft_share(
    data: Split,
    baseline_params: Any,
    *,
    epochs: Optional[int] = None,
    quick: bool = False,
    tau: float = DEFAULT_TAU,
    num_components: int = DEFAULT_NUM_COMPONENTS,
    learning_rate: float = 1e-3,
    final_boost: float = 1.0,
    batch_size: int = 64,
    seed: int = 0,
    quantize_biases: bool = True,
    kl_threshold: float = DEFAULT_KL_THRESHOLD,
    prune: bool = True,
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
      num_components: K, the zero component included.
      learning_rate: Adam step size for the weights.
      final_boost: strength multiplier reached at the end (see :func:`soft_share_optimizer`).
      batch_size, seed: as in :func:`optreg.demo.training.train`.
      quantize_biases: put the biases under the prior and quantise them too (default); with
        False only kernels are (``optreg.decay_mask``) and biases are counted at 32 bits each.
      kl_threshold: passed to :func:`optreg.quantize` (merging of components).
      prune: zero the dead hidden units after quantisation (:func:`prune_dead_units`, lossless).
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
    prior, tx = soft_share_optimizer(n_train, steps, tau=tau, num_components=num_components,
                                     learning_rate=learning_rate, mask=mask, final_boost=final_boost,
                                     **prior_options)
    initial_state = prior.init(baseline_params)
    result = train(tx, data, model=model, params=baseline_params, epochs=epochs, batch_size=batch_size,
                   seed=seed, on_epoch=on_epoch)
    state = result.opt_state[0]
    quantized = quantize(result.params, state, kl_threshold=kl_threshold, mask=mask)
    report_unpruned = compression_report(result.params, quantized, mask=mask)
    if prune:
        quantized = quantized._replace(params=prune_dead_units(quantized.params))
    report = compression_report(result.params, quantized, mask=mask) if prune else report_unpruned
    return SoftShareResult(
        params=result.params,
        quantized=quantized,
        report=report,
        report_unpruned=report_unpruned,
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
