"""The demo's soft weight sharing: :func:`optreg.soft_share_compress` on the digits networks, with its defaults.

Ullrich, Meeds & Welling (2017)'s recipe, run by the library in one call: retrain the
trained baseline under a learned Gaussian-mixture prior, merge and snap the weights,
fine-tune the quantised network (Han, Mao & Dally 2016's trained quantisation) and
count the storage as Han et al. do. For the MLP, :func:`prune_dead_units` then removes
the weights of hidden units that can no longer affect the output — a lossless step
(the same function on every input) that only the demo's own MLP layout allows.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optreg
from optreg.demo.data import Split
from optreg.demo.training import MLP, accuracy, minibatches

#: Retraining and fine-tuning steps with ``quick`` (a smoke run: the numbers are not meaningful).
QUICK_STEPS = 100
BATCH_SIZE = 64


class SoftShareResult(NamedTuple):
    """Everything the demo row and the notebook's pictures need.

    ``compressed`` is the library's :class:`optreg.SoftShareCompressed`; ``params`` the stored
    network (its ``params``, with the MLP's dead units pruned when asked) and ``report`` its count;
    ``report_unpruned`` counts ``compressed.params``. ``weights_*`` are the quantised leaves'
    weights flattened (float32 numpy): before, after retraining, stored; ``normalised_after``
    the retrained ones divided by their leaf's scale (the units of ``compressed.state``).
    """

    compressed: Any
    params: Any
    report: Any
    report_unpruned: Any
    baseline_accuracy: float
    retrained_accuracy: float
    quantized_accuracy: float
    weights_before: np.ndarray
    weights_after: np.ndarray
    weights_quantized: np.ndarray
    normalised_after: np.ndarray
    seconds: float


def _flat(params: Any, mask: Any, scales: Any = None) -> np.ndarray:
    leaves = jax.tree.leaves(params)
    flags = jax.tree.leaves(mask)
    divisors = jax.tree.leaves(scales) if scales is not None else [1.0] * len(leaves)
    return np.concatenate([np.asarray(leaf, np.float32).ravel() / np.float32(scale)
                           for leaf, keep, scale in zip(leaves, flags, divisors) if keep])


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
      params: the MLP's ``params`` (e.g. ``SoftShareCompressed.params``).

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


def step_options(n_train: int, *, epochs: Optional[int] = None, quick: bool = False) -> dict[str, int]:
    """``soft_share_compress``'s step counts: its defaults (``{}``), ``QUICK_STEPS`` each, or ``epochs`` in
    all, split 3:4 between retraining and fine-tuning as the defaults are (60 and 80 epochs)."""
    if quick and epochs is None:
        return {"steps": QUICK_STEPS, "finetune_steps": QUICK_STEPS}
    if epochs is None:
        return {}
    per_epoch = max(1, math.ceil(n_train / BATCH_SIZE))
    retrain = max(1, round(3 * epochs / 7))
    return {"steps": retrain * per_epoch, "finetune_steps": max(1, epochs - retrain) * per_epoch}


def run_soft_share(
    data: Split,
    baseline_params: Any,
    *,
    model: Any = None,
    epochs: Optional[int] = None,
    quick: bool = False,
    seed: int = 0,
    prune: bool = True,
    callback: Optional[Callable[[str, int, int], None]] = None,
    **options: Any,
) -> SoftShareResult:
    """Compresses ``baseline_params`` with ``optreg.soft_share_compress`` (its defaults) and measures it.

    Args:
      data: the digits split (:func:`optreg.demo.data.load_digits_split`).
      baseline_params: the trained network's ``params``.
      model: the Flax module (default ``MLP()``, 64-300-100-10; or ``CNN()``).
      epochs: retraining plus fine-tuning epochs (default: the library's own step counts).
      quick: ``QUICK_STEPS`` steps per phase (a smoke run).
      seed: seeds the minibatch order.
      prune: zero the MLP's dead units after compression (:func:`prune_dead_units`, lossless).
      callback: ``callback(phase, step, total)``, passed to ``soft_share_compress``.
      **options: any other ``soft_share_compress`` option.

    Returns:
      A :class:`SoftShareResult`.
    """
    model = model or MLP()
    x_train, y_train = np.asarray(data.x_train), np.asarray(data.y_train)

    def loss_fn(params: Any, batch: tuple[Any, Any]) -> jax.Array:
        logits = model.apply({"params": params}, batch[0])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

    options = {**step_options(len(x_train), epochs=epochs, quick=quick), **options}
    start = time.perf_counter()
    out = optreg.soft_share_compress(loss_fn, baseline_params, minibatches(x_train, y_train, BATCH_SIZE, seed + 1),
                                     num_examples=len(x_train), callback=callback, **options)
    seconds = time.perf_counter() - start
    mask = jax.tree.map(bool, out.state.mask)
    stored = prune_dead_units(out.params) if prune and isinstance(model, MLP) else out.params
    report = optreg.compression_report(stored, mask=mask) if stored is not out.params else out.report
    return SoftShareResult(
        compressed=out,
        params=stored,
        report=report,
        report_unpruned=out.report,
        baseline_accuracy=accuracy(model, baseline_params, data.x_test, data.y_test),
        retrained_accuracy=accuracy(model, out.retrained, data.x_test, data.y_test),
        quantized_accuracy=accuracy(model, stored, data.x_test, data.y_test),
        weights_before=_flat(baseline_params, mask),
        weights_after=_flat(out.retrained, mask),
        weights_quantized=_flat(stored, mask),
        normalised_after=_flat(out.retrained, mask, out.scales),
        seconds=seconds,
    )
