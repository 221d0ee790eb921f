"""One call from a trained network to a compressed one: soft weight sharing, snapping, a fine-tune, the count.

:func:`soft_share_compress` runs three phases on the user's ``loss_fn``:

1. **Retraining with the mixture prior** (Ullrich et al. 2017): ``chain(soft_share_prior, adam)``
   on the *normalised* weights v = w / s (s: each leaf's root mean square), so that one
   mixture fits every layer whatever its scale, with τ warmed up, held, then raised
   tenfold so that the weights settle on their components. Once an epoch the weights are
   snapped and counted, and the zero component's proportion π_0 is lowered while the
   storage rate exceeds ``max_rate`` (raised while it is below ``min_rate``).
2. **Snapping**: merge the components, snap every weight to its most responsible mean
   (:func:`optreg.quantize`; the zero component gives exact zeros), and measure how far
   the weights moved (:class:`optreg.LayerDiagnostics`).
3. **Fine-tuning the quantised network** (the trained quantisation of Han et al. 2016):
   the zeros stay zero; every other weight takes the nearest value of its leaf's own
   codebook; the codebooks and the underlying weights are trained on the data loss
   through that rounding (gradients passed straight through, Bengio et al. 2013).

The stored network (every value one of its leaf's codebook values, zeros exact) is
counted as Han et al. do (:func:`optreg.compression_report`).

References:
  Ullrich, Meeds & Welling, "Soft weight-sharing for neural network compression", ICLR 2017.
  Han, Mao & Dally, "Deep compression: compressing deep neural networks with pruning, trained quantization
  and Huffman coding", ICLR 2016.
  Bengio, Léonard & Courville, "Estimating or propagating gradients through stochastic neurons for
  conditional computation", arXiv:1308.3432, 2013 (the straight-through estimator).
  Nowlan & Hinton, "Simplifying neural networks by soft weight-sharing", Neural Computation 1992.
  Prechelt, "Early stopping - but when?", in Neural Networks: Tricks of the Trade, Springer 1998
  (the fine-tune's checkpoint chosen on validation batches).
"""

from __future__ import annotations

import functools
import itertools
import math
import numbers
import warnings
from typing import Any, Callable, Iterable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optreg import _soft_share_budget as _budget
from optreg import _tree
from optreg._compression import DEFAULT_FAR_SIGMAS, DEFAULT_KL_THRESHOLD, LayerDiagnostics, SnapWarning, quantize
from optreg._mixture import MixturePrior, MixtureState
from optreg._soft_share import soft_share_prior
from optreg._soft_share_batches import MAX_CACHED_BATCHES, Batches
from optreg._storage import CompressionReport, compression_report
from optreg._tree import Mask

#: The hyperpriors in normalised units (weights divided by their leaf's RMS): non-zero components
#: held near σ = 0.25 (Gamma mode (α − 1)/β = 16), the zero component near σ_0 = 0.05 (mode 400).
DEFAULT_PRIOR = MixturePrior(precision=(10000.0, 625.0), zero_precision=(5000.0, 12.5))
#: The storage floor the fine-tune prunes to when the prior left the network denser, for a network of
#: at most AUTO_MIN_RATE_SIZE quantised weights (Han et al. report 40x for LeNet-300-100 and 39x for
#: LeNet-5). ``min_rate="auto"`` raises it as √N beyond that size, up to AUTO_MIN_RATE_CAP (Ullrich
#: et al.'s 64x for LeNet-300-100): a larger network affords a higher rate at the same accuracy.
DEFAULT_MIN_RATE = 40.0
AUTO_MIN_RATE_SIZE, AUTO_MIN_RATE_CAP = 18_000, 64.0
#: τ's schedule while retraining: warm-up fraction, hold until this fraction, then raised by this factor.
WARMUP_FRACTION, HOLD_FRACTION, FINAL_RISE = 0.2, 0.5, 10.0
#: The ceiling on the storage rate while retraining: beyond it π_0 is lowered (more compression costs accuracy).
DEFAULT_MAX_RATE = 80.0
RATE_CONTROL_ODDS, RATE_SETTLING = 1.15, 0.03
RATE_CONTROL_MIN_INTERVAL, ZERO_MIXING_RANGE = 10, (0.9, 0.9995)
#: ``warn_loss_rise``'s default, in loss units: a mean cross-entropy (nats) that rose more than this marked
#: 11 of the 12 digits networks that lost more than 2 points at 40x (each pruned to its floor), and 1 of
#: the 76 that did not (it lost 2.00; docs/soft-sharing.md).
DEFAULT_WARN_LOSS_RISE = 0.05
#: loss(batch given twice) / loss(batch) above this marks a sum over the batch (a mean gives 1, a sum 2).
SUM_RATIO = 1.5
#: A leaf with an all-zero gradient is taken as used (frozen) when scaling it moves the loss by more than
#: this fraction of it (an unused leaf leaves it unchanged to the bit; the slack is for reductions whose
#: order may vary on accelerators).
FROZEN_CHANGE = 1e-6
#: The relative scaling that tells a frozen leaf (the loss moves) from an unused one or a flat loss (it does not).
NUDGE = 1e-2


class CompressionWarning(UserWarning):
    """:func:`optreg.soft_share_compress` stored, or is about to store, a network that may have lost what it knew.

    After training: the stored network has a higher training loss than its input. The message says
    by how much and what to change: when the fine-tune had to prune to meet ``min_rate``, the floor
    may be too high for the network (networks of a few thousand weights keep their accuracy at 20x,
    not at 40x); otherwise the prior took weights the network needs (too few steps or too strong a
    ``weight_decay``). ``warn_loss_rise=None`` turns this check off. Before training: an explicit
    ``min_rate`` asks the quantised leaves for more than the default ceiling, or ``loss_fn`` does
    not use some quantised leaves (the prior would zero them, and the count take them as free).
    """


class SoftShareCompressed(NamedTuple):
    """What :func:`soft_share_compress` returns.

    Attributes:
      params: the stored network: the input's structure, shapes and dtypes; every quantised
        leaf takes only its codebook's values and exact zeros.
      report: its :class:`optreg.CompressionReport` (Han et al.'s count).
      state: the :class:`optreg.MixtureState` at the end of retraining, over the *normalised*
        weights w / scale (its ``mask`` records the quantised leaves).
      diagnostics: one :class:`optreg.LayerDiagnostics` per quantised leaf: how far snapping
        moved the retrained weights, in σ's of their component. They describe the snap, before
        the fine-tune: its ``zero_fraction`` is what the prior zeroed, not the stored sparsity
        (the fine-tune may prune further to meet ``min_rate``; ``report`` has the stored one).
      codebooks: leaf path -> the distinct non-zero values stored for that leaf.
      scales: the per-leaf normalisation s (a pytree of floats; 1.0 for leaves left alone).
      retrained: the float network after retraining, before snapping.
      losses: mean data loss on the first batches: ``"start"`` (the input), ``"retrained"``,
        ``"snapped"`` (before the fine-tune) and ``"final"`` (the stored network); and
        ``"validation"``, the stored network's on the validation batches when they were given.
    """

    params: Any
    report: CompressionReport
    state: MixtureState
    diagnostics: tuple[LayerDiagnostics, ...]
    codebooks: dict[str, np.ndarray]
    scales: Any
    retrained: Any
    losses: dict[str, float]


class _Settings(NamedTuple):
    """The validated options of one call."""

    steps: int
    finetune_steps: int
    weight_decay: float
    num_components: int
    zero_mixing: float
    prior: MixturePrior
    learning_rate: float
    finetune_learning_rate: float
    codebook_learning_rate: float
    mixture_learning_rate: float
    kl_threshold: float
    far_sigmas: float
    min_rate: Optional[float]
    max_rate: Optional[float]
    warn_loss_rise: Optional[float]


# ----------------------------------------------------------------------------- the float leaves, normalised


class _Layout:
    """Splits the params into their floating leaves (trained) and the rest (left as they are)."""

    def __init__(self, params: Any, mask: Mask) -> None:
        _tree.check_real(params)
        _check_no_layer_state(params)
        self.leaves, self.treedef = jax.tree_util.tree_flatten(params)
        self.paths = _tree.leaf_paths(params)
        _check_leaves(self.paths, self.leaves)
        selected = _tree.resolve_mask(mask, params)
        self.floating = [i for i, leaf in enumerate(self.leaves) if _tree.is_floating(leaf)]
        self.quantised = [selected[i] for i in self.floating]
        if not any(self.quantised):
            raise ValueError("soft_share_compress: mask selects no floating leaf; there is nothing to compress.")
        self.scales = [_rms(self.leaves[i]) for i in self.floating]

    def normalised(self) -> list[jax.Array]:
        return [jnp.asarray(self.leaves[i], jnp.float32) / s for i, s in zip(self.floating, self.scales)]

    def params(self, values: list[jax.Array]) -> Any:
        """The full pytree from normalised float leaves (scaled back, cast to each leaf's dtype)."""
        leaves = list(self.leaves)
        for index, value, scale in zip(self.floating, values, self.scales):
            leaves[index] = (value * scale).astype(jnp.asarray(self.leaves[index]).dtype)
        return jax.tree_util.tree_unflatten(self.treedef, leaves)

    def returned(self, values: list[jax.Array]) -> Any:
        """:meth:`params`, with the input's own numbers wherever a leaf left out of the mask was not moved
        (w / scale · scale is not always w to the bit)."""
        tree = jax.tree_util.tree_leaves(self.params(values))
        for index, value, scale, quantised in zip(self.floating, values, self.scales, self.quantised):
            if not quantised:
                start = jnp.asarray(self.leaves[index])
                unmoved = value == (jnp.asarray(start, jnp.float32) / scale)
                tree[index] = jnp.where(unmoved, start, tree[index])
        return jax.tree_util.tree_unflatten(self.treedef, tree)

    def host_params(self, values: list[np.ndarray]) -> Any:
        """The full pytree on the host with these float leaves (for counting bits; not scaled)."""
        leaves: list[Any] = [np.asarray(leaf) if hasattr(leaf, "shape") else leaf for leaf in self.leaves]
        for index, value in zip(self.floating, values):
            leaves[index] = value
        return jax.tree_util.tree_unflatten(self.treedef, leaves)

    def size(self, quantised: bool = True) -> int:
        """The number of quantised weights (or of the floating ones left out of the mask)."""
        return sum(int(np.size(self.leaves[i])) for i, keep in zip(self.floating, self.quantised)
                   if keep == quantised)

    def mask_tree(self) -> Any:
        flags = [False] * len(self.leaves)
        for index, keep in zip(self.floating, self.quantised):
            flags[index] = keep
        return jax.tree_util.tree_unflatten(self.treedef, flags)


#: How each library spells layer state that gradients do not train, and the fix for it.
_LAYER_STATE_FIX = {
    "flax": "Flax's batch_stats collection or an nnx.BatchStat: pass only the trainable parameters "
            "(variables['params'] in linen, nnx.split(model, nnx.Param, ...) in NNX) and close over the statistics "
            "in loss_fn, e.g. model.apply({'params': p, 'batch_stats': stats}, x, train=False)",
    "equinox": "an eqx.nn.State or StateIndex, e.g. BatchNorm's running statistics: make the model with "
               "eqx.nn.make_with_state(Model)(...), pass eqx.partition(model, eqx.is_array)[0] and close over the "
               "state in loss_fn (in inference mode)",
}


def _layer_state_kind(node: Any) -> Optional[str]:
    """"flax" or "equinox" for layer state holding arrays (an nnx.BatchStat, an Equinox State/StateIndex)."""
    kind = type(node)
    if any(base.__name__ == "BatchStat" for base in kind.__mro__):
        return "flax"
    if kind.__module__.startswith("equinox") and kind.__name__ in ("State", "StateIndex") and jax.tree.leaves(node):
        return "equinox"
    return None


def _check_no_layer_state(params: Any) -> None:
    """Layer state (running statistics) is not trained by gradients: refused, with each library's fix."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params, is_leaf=lambda node: _layer_state_kind(node) is not None)
    for path, node in flat:
        name = _tree.path_to_string(path)
        kind = _layer_state_kind(node) or ("flax" if "batch_stats" in name.split("/") else None)
        if kind is not None:
            raise ValueError(
                f"soft_share_compress: params leaf {name!r} is layer state that gradients do not train "
                f"({_LAYER_STATE_FIX[kind]}). Every floating leaf is retrained, and one left out of the mask is "
                "still fine-tuned.")


def _check_leaves(paths: list[str], leaves: list[Any]) -> None:
    """Every leaf a concrete array or a number, every floating one finite (else training is silently
    meaningless)."""
    for path, leaf in zip(paths, leaves):
        if isinstance(leaf, jax.core.Tracer):
            raise TypeError(
                f"soft_share_compress: params leaf {path!r} is a tracer: soft_share_compress runs its own training "
                "loop and cannot be traced; call it outside jax.jit, jax.vmap and jax.grad, with concrete arrays.")
        if not (hasattr(leaf, "dtype") or isinstance(leaf, numbers.Number)):
            raise TypeError(
                f"soft_share_compress: params leaf {path!r} is a {type(leaf).__name__}, not an array; pass the "
                "arrays only and close over the rest in loss_fn (Equinox: params, static = eqx.partition(model, "
                "eqx.is_array), and eqx.combine(params, static) inside loss_fn).")
        if _tree.is_floating(leaf) and not bool(jnp.all(jnp.isfinite(jnp.asarray(leaf)))):
            raise ValueError(f"soft_share_compress: params leaf {path!r} has non-finite values (NaN or inf); "
                             "compress a network whose weights are all finite.")


def _check_floor_reachable(layout: _Layout, min_rate: Optional[float]) -> None:
    """The leaves left out of the mask are stored at 32 bits: they alone cap the rate at all / left-out, and
    a floor near that cap leaves the quantised leaves almost no bits."""
    left_out, quantised = layout.size(quantised=False), layout.size()
    if min_rate is None or not left_out:
        return
    cap, auto = (quantised + left_out) / left_out, auto_min_rate(quantised, left_out)
    if min_rate >= cap:
        raise ValueError(
            f"soft_share_compress: min_rate={min_rate:g} cannot be met: the {left_out} floating weights left out "
            f"of the mask are stored at 32 bits and cap the whole network's rate at {cap:.1f}x even if every "
            f"quantised weight were 0. Select more leaves in mask, or pass min_rate='auto' ({auto:.1f}x here: "
            f"the quantised leaves at the floor they would have alone) or None.")
    needed = quantised / ((quantised + left_out) / min_rate - left_out)
    if needed > DEFAULT_MAX_RATE:
        warnings.warn(
            f"soft_share_compress: min_rate={min_rate:g} with {left_out} floating weights left out of the mask "
            f"(stored at 32 bits: {_floor_share(32 * left_out, quantised + left_out, min_rate):.0f} % of the bits "
            f"the floor allows) asks the {quantised} quantised weights for {needed:.1f}x, beyond the "
            f"{DEFAULT_MAX_RATE:g}x ceiling the defaults hold the prior's own compression under (max_rate); the "
            f"fine-tune may prune most of them. min_rate='auto' ({auto:.1f}x here) gives the quantised leaves the "
            "floor they would have alone.",
            CompressionWarning, stacklevel=3)


def _floor_share(bits: float, size: int, min_rate: float) -> float:
    """``bits`` in percent of what ``size`` weights stored at ``min_rate`` may take (32·size / min_rate)."""
    return 100.0 * bits * min_rate / (32.0 * size)


def _rms(leaf: Any) -> float:
    value = float(jnp.sqrt(jnp.mean(jnp.square(jnp.asarray(leaf, jnp.float32))))) if np.size(leaf) else 0.0
    return value if value > 0 and math.isfinite(value) else 1.0


# ----------------------------------------------------------------------------- training loops


def _mean_loss(loss: Callable[[Any, Any], jax.Array], trainable: Any, held: list[Any]) -> float:
    return float(np.mean([float(loss(trainable, batch)) for batch in held]))


def _strength(weight_decay: float, steps: int) -> optax.Schedule:
    """τ: linear warm-up over the first 20 % of the steps, held to 50 %, then raised tenfold by the end."""
    warmup, hold = max(1, int(steps * WARMUP_FRACTION)), max(1, int(steps * HOLD_FRACTION))
    return optax.join_schedules(
        [optax.linear_schedule(0.0, weight_decay, warmup), optax.constant_schedule(weight_decay),
         optax.exponential_decay(weight_decay, max(1, steps - hold), FINAL_RISE)],
        [warmup, hold],
    )


class _RateControl:
    """Steers π_0 so that the snapped network's storage rate (Han et al.'s count) stays in [min_rate, max_rate].

    The zero component's proportion π_0 sets how many weights the snap zeroes. Once τ is warmed
    up, every epoch (at most every :data:`RATE_CONTROL_MIN_INTERVAL` steps) the retrained weights
    are snapped and counted: above ``max_rate`` the odds π_0 / (1 − π_0) are divided by
    :data:`RATE_CONTROL_ODDS` (unless the rate already fell by :data:`RATE_SETTLING` since the
    last count: weights leave the zero component over several epochs); below ``min_rate`` they
    are multiplied by it; π_0 stays within :data:`ZERO_MIXING_RANGE`. The rate still falls
    somewhat afterwards, while the data term pulls weights out of the zero component.
    """

    def __init__(self, layout: _Layout, settings: _Settings, steps_per_epoch: int) -> None:
        self.layout, self.settings = layout, settings
        self.every = max(RATE_CONTROL_MIN_INTERVAL, min(steps_per_epoch, settings.steps // 50))
        self.start = int(settings.steps * WARMUP_FRACTION)
        self.zero_mixing = settings.zero_mixing
        self.rates: list[float] = []

    def update(self, index: int, values: list[jax.Array], state: MixtureState) -> None:
        """Counts the snapped network on a control step and adjusts π_0."""
        low, high = self.settings.min_rate, self.settings.max_rate
        if (low is None and high is None) or index < self.start or (index + 1 - self.start) % self.every:
            return
        snapped = _snap(self.layout, values, state, self.settings)
        host = self.layout.host_params([np.asarray(v) for v in snapped.params])
        rate = float(compression_report(host, mask=self.layout.mask_tree()).compression_rate)
        falling = bool(self.rates) and rate < self.rates[-1] * (1.0 - RATE_SETTLING)
        self.rates.append(rate)
        odds = self.zero_mixing / (1.0 - self.zero_mixing)
        if high is not None and rate > high:
            if not falling:
                odds /= RATE_CONTROL_ODDS
        elif low is not None and rate < low:
            odds *= RATE_CONTROL_ODDS
        self.zero_mixing = float(np.clip(odds / (1.0 + odds), *ZERO_MIXING_RANGE))


def _retrain(layout: _Layout, loss: Callable[[Any, Any], jax.Array], batches: Batches,
             settings: _Settings, callback: Any) -> tuple[list[jax.Array], MixtureState]:
    """Phase 1: ``chain(soft_share_prior, adam)`` on the normalised float leaves, π_0 under rate control."""
    static = ("num_components", "init_std", "refresh_every", "grid_size")
    prior = optax.inject_hyperparams(soft_share_prior, static_args=static)(
        _strength(settings.weight_decay, settings.steps), settings.num_components, prior=settings.prior,
        zero_mixing=settings.zero_mixing, optimizer=optax.adam(settings.mixture_learning_rate), init_std=0.5,
        refresh_every=1, mask=list(layout.quantised),
    )
    tx = optax.chain(prior, optax.adam(settings.learning_rate))

    @functools.partial(jax.jit, donate_argnums=0)
    def step(carry: tuple[Any, Any], batch: Any, zero_mixing: jax.Array) -> tuple[Any, Any]:
        values, (prior_state, adam_state) = carry
        hyperparams = {**prior_state.hyperparams, "zero_mixing": zero_mixing}
        state = (prior_state._replace(hyperparams=hyperparams), adam_state)
        grads = jax.grad(loss)(values, batch)
        updates, state = tx.update(grads, state, values)
        return optax.apply_updates(values, updates), state

    control = _RateControl(layout, settings, batches.steps_per_epoch)
    values = layout.normalised()
    carry = (values, tx.init(values))
    for index in range(settings.steps):
        carry = step(carry, next(batches), jnp.float32(control.zero_mixing))
        control.update(index, carry[0], carry[1][0].inner_state)
        if callback is not None:
            callback("retrain", index, settings.steps)
    return carry[0], carry[1][0].inner_state


def _nearest(v: jax.Array, codebook: jax.Array) -> jax.Array:
    """Each entry of ``v`` -> the nearest value of ``codebook`` (elementwise passes, no (N, C) array).

    Differentiable in ``codebook`` (each value collects the gradient of the entries it is chosen for).
    """
    value = jnp.broadcast_to(codebook[0], v.shape)
    best = jnp.abs(v - codebook[0])
    for j in range(1, codebook.shape[0]):
        distance = jnp.abs(v - codebook[j])
        take = distance < best
        best = jnp.where(take, distance, best)
        value = jnp.where(take, codebook[j], value)
    return value


def _rounded(values: list[jax.Array], codebooks: list[Optional[jax.Array]], keep: list[Optional[jax.Array]],
             straight_through: bool) -> list[jax.Array]:
    """The quantised float leaves: zeros where snapped to 0, else the nearest codebook value."""
    out = []
    for v, codebook, nonzero in zip(values, codebooks, keep):
        if nonzero is None:
            out.append(v)
        elif codebook is None:
            out.append(jnp.zeros_like(v))
        else:
            fixed = jax.lax.stop_gradient(v)
            q = _nearest(fixed, codebook) + (v - fixed if straight_through else 0.0)
            out.append(jnp.where(nonzero, q, 0.0))
    return out


def _magnitudes(values: list[jax.Array], keep: list[Optional[Any]]) -> list[Optional[np.ndarray]]:
    """|v| of the quantised leaves' kept weights on the host (0 where zero; None for other leaves)."""
    return [None if k is None else np.where(np.asarray(k), np.abs(np.asarray(v, np.float32)), 0.0)
            for v, k in zip(values, keep)]


def _saliencies(carry: Any, keep: list[Optional[Any]]) -> list[Optional[np.ndarray]]:
    """Optimal Brain Damage's ½·F_ii·v_i² with the empirical Fisher F_ii ≈ Adam's second moment (as √)."""
    values = carry[0][0]
    second_moment = carry[1].inner_states["weights"].inner_state[0].nu[0]
    return [None if k is None else np.where(np.asarray(k), np.sqrt(np.asarray(n, np.float64))
                                            * np.abs(np.asarray(v, np.float64)) + 1e-30, 0.0)
            for v, n, k in zip(values, second_moment, keep)]


def _rate_of_pattern(layout: _Layout, stored: list[jax.Array]) -> Callable[[list[Optional[np.ndarray]]], float]:
    """pattern (per leaf: non-zero where kept) -> the compression rate of the ``stored`` values on it."""
    host_stored = [np.asarray(q, np.float32) for q in stored]
    mask_tree = layout.mask_tree()

    def rate(pattern: list[Optional[np.ndarray]]) -> float:
        leaves = [q if p is None else np.where(p != 0, q, 0.0) for q, p in zip(host_stored, pattern)]
        return float(compression_report(layout.host_params(leaves), mask=mask_tree).compression_rate)

    return rate


def _prune(carry: Any, keep: list[Optional[jax.Array]], base: int, rate: Callable[..., float], index: int,
           settings: _Settings) -> list[Optional[jax.Array]]:
    """One pruning event: the zeros the floor needs under the current saliencies, times the cubic schedule."""
    saliencies = _saliencies(carry, keep)
    zeros = sum(int(np.sum(m == 0)) for m in saliencies if m is not None)
    assert settings.min_rate is not None
    needed = _budget.extra_zeros_for_rate(saliencies, rate, settings.min_rate) + zeros - base
    due = _budget.zeros_due(index, settings.finetune_steps, needed)
    masks = _budget.prune_smallest(saliencies, base + due - zeros)
    return [None if m is None else jnp.asarray(m) for m in masks]


#: A leaf keeps at most one codebook value per this many non-zero weights (a value costs 32 bits).
WEIGHTS_PER_CODEBOOK_VALUE = 4


def _leaf_codebook(snapped: np.ndarray) -> Optional[jax.Array]:
    """The non-zero values one leaf was snapped to, fewer for a small leaf; None when all are zero.

    A leaf with n non-zero weights keeps at most max(1, n // 4) values (a codebook value costs 32
    bits, eight bits per weight at most; fewer values cost small layers, such as a first
    convolution, their accuracy): the closest pair by Ward's criterion c_a·c_b/(c_a + c_b)·(u_a − u_b)²
    (c: how many weights use the value) is merged into its count-weighted mean until few enough remain.
    """
    unique, usage = np.unique(snapped[snapped != 0], return_counts=True)
    if not unique.size:
        return None
    values, counts = [float(v) for v in unique], [float(c) for c in usage]
    limit = max(1, int(sum(counts)) // WEIGHTS_PER_CODEBOOK_VALUE)
    while len(values) > limit:
        costs = [counts[i] * counts[i + 1] / (counts[i] + counts[i + 1]) * (values[i] - values[i + 1]) ** 2
                 for i in range(len(values) - 1)]
        i = int(np.argmin(costs))
        total = counts[i] + counts[i + 1]
        values[i] = (counts[i] * values[i] + counts[i + 1] * values[i + 1]) / total
        counts[i] = total
        del values[i + 1], counts[i + 1]
    return jnp.asarray(values, jnp.float32)


#: With validation batches, the fine-tune's stored network is compared on them this many times after its pruning.
VALIDATION_CHECKS = 20


class _BestOnValidation:
    """The fine-tune's checkpoint whose stored network has the lowest mean loss on held-out batches.

    Candidates are taken once the pruning is over (every 1/:data:`VALIDATION_CHECKS` of the rest,
    and the last step), so that each meets the storage floor: early stopping (Prechelt 1998) over
    the second half of the fine-tune.
    """

    def __init__(self, loss: Callable[[Any, Any], jax.Array], batches: list[Any], steps: int) -> None:
        self.loss, self.batches, self.steps = loss, batches, steps
        self.start = _budget.pruning_span(steps) - 1  # the last pruning step
        self.every = max(1, (steps - self.start) // VALIDATION_CHECKS)
        self.best: Optional[tuple[float, Any, list[Optional[jax.Array]]]] = None

    def offer(self, index: int, trainable: Any, keep: list[Optional[jax.Array]],
              stored: Callable[[Any, list[Optional[jax.Array]]], list[jax.Array]]) -> None:
        """On a checkpoint step, evaluates ``stored(trainable, keep)``; keeps a copy of the best."""
        due = index >= self.start and ((index - self.start) % self.every == 0 or index == self.steps - 1)
        if not due:
            return
        value = _mean_loss(self.loss, stored(trainable, keep), self.batches)
        if self.best is None or value <= self.best[0]:
            self.best = (value, jax.tree.map(jnp.copy, trainable), list(keep))


def _finetune_schedule(rate: float, steps: int) -> optax.Schedule:
    """Constant while pruning (the first half), then a cosine decay to 0 so that the stored network settles."""
    span = _budget.pruning_span(steps)
    decay = optax.cosine_decay_schedule(rate, max(1, steps - span))
    return optax.join_schedules([optax.constant_schedule(rate), decay], [span])


def _finetune(layout: _Layout, loss: Callable[[Any, Any], jax.Array], batches: Batches, values: list[jax.Array],
              snapped: list[jax.Array], settings: _Settings, callback: Any, validation: Optional[list[Any]] = None,
              ) -> tuple[list[jax.Array], list[Optional[jax.Array]], list[Optional[jax.Array]], Optional[float]]:
    """Phase 3: the zeros fixed, the rest rounded to per-leaf codebooks trained through the rounding.

    Returns (values, codebooks, kept pattern, the snapped network's rate: None without a floor).

    When the snapped network stores below ``min_rate``, the least salient weights are zeroed on the
    cubic schedule of :mod:`optreg._soft_share_budget` during the first half, each time as many as
    the network as it would be stored then (the current weights rounded to the current codebooks)
    needs to meet the floor: the snapped values' codebooks hold values the fine-tune stops using.
    With ``validation`` batches, the checkpoint after the pruning whose stored network does best on
    them is returned instead of the last (:class:`_BestOnValidation`).
    """
    keep: list[Optional[jax.Array]] = [(q != 0) if quantised else None
                                       for q, quantised in zip(snapped, layout.quantised)]
    codebooks = [_leaf_codebook(np.asarray(q)) if quantised else None
                 for q, quantised in zip(snapped, layout.quantised)]
    trainable = (values, [c for c in codebooks if c is not None])
    labels = (["weights"] * len(values), ["codebooks"] * len(trainable[1]))
    steps = settings.finetune_steps
    tx = optax.multi_transform({"weights": optax.adam(_finetune_schedule(settings.finetune_learning_rate, steps)),
                                "codebooks": optax.adam(_finetune_schedule(settings.codebook_learning_rate, steps))},
                               labels)

    def fill(found: list[jax.Array]) -> list[Optional[jax.Array]]:
        it = iter(found)
        return [next(it) if c is not None else None for c in codebooks]

    @functools.partial(jax.jit, donate_argnums=0)
    def step(carry: tuple[Any, Any], batch: Any, keep: list[Optional[jax.Array]]) -> tuple[Any, Any]:
        t, state = carry
        grads = jax.grad(lambda t: loss(_rounded(t[0], fill(t[1]), keep, True), batch))(t)
        updates, state = tx.update(grads, state, t)
        return optax.apply_updates(t, updates), state

    def stored(t: Any, keep: list[Optional[jax.Array]]) -> list[jax.Array]:
        """The network as it would be stored now: the weights rounded to the codebooks, zeros where not kept."""
        return _rounded(t[0], fill(t[1]), keep, False)

    snapped_rate = None if settings.min_rate is None else \
        _rate_of_pattern(layout, stored(trainable, keep))(_magnitudes(values, keep))
    prune = snapped_rate is not None and settings.min_rate is not None and snapped_rate < settings.min_rate
    base = sum(int(np.sum(~np.asarray(k))) for k in keep if k is not None)
    carry = (trainable, tx.init(trainable))
    best = None if validation is None else _BestOnValidation(loss, validation, steps)
    for index in range(settings.finetune_steps):
        carry = step(carry, next(batches), keep)
        if prune and _budget.is_pruning_step(index, settings.finetune_steps):
            keep = _prune(carry, keep, base, _rate_of_pattern(layout, stored(carry[0], keep)), index, settings)
        if best is not None:
            best.offer(index, carry[0], keep, stored)
        if callback is not None:
            callback("finetune", index, settings.finetune_steps)
    trainable = carry[0]
    if best is not None and best.best is not None:
        _, trainable, keep = best.best
    return trainable[0], fill(trainable[1]), keep, snapped_rate


def _meet_floor(layout: _Layout, final: list[jax.Array], settings: _Settings) -> list[jax.Array]:
    """The stored leaves with the fewest smallest weights zeroed for the count to meet ``min_rate``.

    The fine-tune prunes on the count of the network as it was at its last pruning step; a leaf
    whose kept weights then spread over more of its codebook needs more index bits than that
    count saw, so the stored network can fall just short of the floor. This tops it up (no
    training: a few weights at most).
    """
    if settings.min_rate is None:
        return final
    rate = _rate_of_pattern(layout, final)
    keep = [(q != 0) if quantised else None for q, quantised in zip(final, layout.quantised)]
    magnitudes = _magnitudes(final, keep)
    extra = _budget.extra_zeros_for_rate(magnitudes, rate, settings.min_rate)
    if not extra:
        return final
    masks = _budget.prune_smallest(magnitudes, extra)
    return [q if m is None else jnp.where(jnp.asarray(m), q, 0.0) for q, m in zip(final, masks)]


# ----------------------------------------------------------------------------- snapping and what is reported


def _snap(layout: _Layout, values: list[jax.Array], state: MixtureState, settings: _Settings) -> Any:
    """Phase 2: :func:`optreg.quantize` of the normalised leaves (no warning: the fine-tune follows)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SnapWarning)
        return quantize(values, state, kl_threshold=settings.kl_threshold, far_sigmas=settings.far_sigmas,
                        warn_far_fraction=None)


def _relabel(layout: _Layout, quantized: Any) -> tuple[LayerDiagnostics, ...]:
    """The diagnostics with the params' paths (quantize saw the list of float leaves)."""
    return tuple(d._replace(path=layout.paths[layout.floating[int(d.path)]]) for d in quantized.diagnostics)


def _codebooks(layout: _Layout, stored: Any) -> dict[str, np.ndarray]:
    leaves = jax.tree.leaves(stored)
    out = {}
    for index, keep in zip(layout.floating, layout.quantised):
        if keep:
            values = np.unique(np.asarray(jax.device_get(leaves[index]), np.float32))
            out[layout.paths[index]] = values[values != 0]
    return out


def _scales(layout: _Layout) -> Any:
    leaves: list[Any] = [1.0] * len(layout.leaves)
    for index, scale in zip(layout.floating, layout.scales):
        leaves[index] = scale
    return jax.tree_util.tree_unflatten(layout.treedef, leaves)


# ----------------------------------------------------------------------------- the public call


def _positive(value: Any, name: str, *, integer: bool = False, fraction: bool = False) -> Any:
    if not isinstance(value, (bool, np.bool_)) and hasattr(value, "dtype") and np.shape(value) == ():
        value = np.asarray(value).item()  # a 0-d array, NumPy's or JAX's, is its number
    kinds = (numbers.Integral, np.integer) if integer else (numbers.Real, np.floating, np.integer)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(float(value)) \
            or float(value) <= 0 or (fraction and float(value) >= 1):
        wanted = "an int >= 1" if integer else ("a number in (0, 1)" if fraction else "a finite number > 0")
        raise ValueError(f"soft_share_compress: {name} must be {wanted}, got {name}={value!r}.")
    return int(float(value)) if integer else float(value)


def _validation_batches(validation: Optional[Iterable[Any]]) -> Optional[list[Any]]:
    """The first :data:`MAX_CACHED_BATCHES` validation batches, read once (None stays None)."""
    if validation is None:
        return None
    try:
        batches = list(itertools.islice(iter(validation), MAX_CACHED_BATCHES))
    except TypeError:
        raise TypeError(f"soft_share_compress: validation must be an iterable of batches or None, got "
                        f"{type(validation).__name__}.") from None
    if not batches:
        raise ValueError("soft_share_compress: validation yielded no batch; pass held-out batches (e.g. a list of "
                         "(x, y) tuples) or None.")
    return batches


def _check_loss_fn(loss_fn: Callable[[Any, Any], Any], params: Any, batch: Any, default_strength: bool) -> None:
    """``loss_fn`` returns a scalar, and (with the default τ, which assumes it) a mean over the batch, not a sum."""
    shape = jax.eval_shape(loss_fn, params, batch)
    if not (isinstance(shape, jax.ShapeDtypeStruct) and shape.shape == ()):
        got = jax.tree.map(lambda leaf: f"{leaf.dtype}{list(leaf.shape)}", shape)
        raise TypeError(
            f"soft_share_compress: loss_fn(params, batch) must return a scalar, the mean data loss over the batch; "
            f"got {got}. For a (loss, aux) pair pass lambda p, b: loss_fn(p, b)[0]; for per-example losses take "
            ".mean().")
    leaves = jax.tree.leaves(batch)
    if not default_strength or not leaves or any(np.ndim(leaf) == 0 for leaf in leaves):
        return
    try:  # a mean is unchanged when every example appears twice; a sum doubles
        doubled = jax.tree.map(lambda leaf: jnp.concatenate([leaf, leaf]), batch)
        once, twice = float(loss_fn(params, batch)), float(loss_fn(params, doubled))
    except Exception:  # noqa: BLE001  (a loss_fn tied to one batch shape: no check)
        return
    if once > 0 and np.isfinite(twice) and twice / once > SUM_RATIO:
        raise ValueError(
            f"soft_share_compress: loss_fn looks like a sum over the batch, not a mean: {twice:.4g} on the first "
            f"batch given twice, {once:.4g} on it once. The default weight_decay (0.01 / num_examples) assumes a "
            "mean (summed, the prior is a batch size weaker and snapping cost a digits MLP 4 points): return "
            ".mean() over the batch (a sum divided by a fixed number counts as a sum: divide by the batch's "
            "size), or keep the sum and pass weight_decay scaled by the batch size.")


def _check_leaves_get_gradient(loss: Callable[[Any, Any], Any], layout: _Layout, batch: Any) -> None:
    """Quantised leaves to which ``loss`` gives an all-zero gradient on the first batch, which only the prior
    would move (to 0). Each is scaled by 1 + :data:`NUDGE`: a leaf that then moves the loss is used but frozen
    (behind ``stop_gradient``: a frozen-feature CNN went to chance accuracy), and is refused; if none moves it,
    they are unused (a :class:`CompressionWarning`: the count would take them as free weights), unless every
    leaf is idle, which is a loss flat on this batch (a hinge loss with every margin met): no verdict."""
    values = layout.normalised()
    grads = jax.jit(jax.grad(loss))(values, batch)
    quantised = [k for k, keep in enumerate(layout.quantised) if keep and np.any(np.asarray(values[k]))]
    idle = [k for k in quantised if not np.any(np.asarray(grads[k]))]
    if not idle:
        return
    start = float(loss(values, batch))

    def moves(chosen: set) -> bool:
        nudged = [v * (1.0 + NUDGE) if k in chosen else v for k, v in enumerate(values)]
        return abs(float(loss(nudged, batch)) - start) > FROZEN_CHANGE * max(1.0, abs(start))

    if moves(set(idle)):
        frozen = [k for k in idle if moves({k})] or idle
        raise ValueError(
            f"soft_share_compress: loss_fn uses the leaves {[layout.paths[layout.floating[k]] for k in frozen]} but "
            "gives them an all-zero gradient on the first batch (frozen, e.g. behind jax.lax.stop_gradient): only "
            "the prior would move them, to 0. Leave them out with mask= (they are then returned as they are, stored "
            "at 32 bits), or pass only the trainable parameters and close over the frozen ones in loss_fn.")
    if len(idle) < len(quantised):
        warnings.warn(
            f"soft_share_compress: loss_fn does not use the leaves {[layout.paths[layout.floating[k]] for k in idle]} "
            "(an all-zero gradient on the first batch, and scaling them leaves its value unchanged): the prior will "
            "zero them and the count will take them as free weights. Leave them out of params (or out of the mask, "
            "stored at 32 bits) if they are not part of the network.", CompressionWarning, stacklevel=3)


def _check_finite(losses: dict[str, float], phase: str, settings: _Settings) -> None:
    """A non-finite data loss stops the call (a NaN network must not be returned as a result)."""
    value = losses[phase]
    if np.isfinite(value):
        return
    if phase == "start":
        raise ValueError(f"soft_share_compress: loss_fn of the input params on the first training batches is "
                         f"{value}; compress a network whose data loss is finite (check loss_fn and the batches).")
    if phase == "retrained":
        during, rate = "retraining with the prior", f"learning_rate={settings.learning_rate:g}"
    else:
        during, rate = "fine-tuning the codebooks", f"finetune_learning_rate={settings.finetune_learning_rate:g}"
    raise FloatingPointError(
        f"soft_share_compress: the data loss became {value} while {during} (the input's: {losses['start']:.4g}). "
        "If params hold state gradients do not train (running statistics, step counters kept as floats), pass "
        f"only the trainable parameters and close over the rest in loss_fn; otherwise lower {rate}.")


def _warn_if_loss_rose(losses: dict[str, float], snapped_rate: Optional[float], report: CompressionReport,
                       settings: _Settings) -> None:
    """A :class:`CompressionWarning` when the stored network's loss exceeds the input's by more than allowed
    (``snapped_rate``: the rate the fine-tune's pruning decision saw, None without a floor). The cause it
    names: retraining, when the float network had already lost more than allowed and the rest added no
    more than that; else the floor, when the fine-tune pruned to meet it; else the prior at the snap."""
    if settings.warn_loss_rise is None or not losses["final"] - losses["start"] > settings.warn_loss_rise:
        return
    rise = (f"soft_share_compress: the stored network's mean loss on the first training batches is "
            f"{losses['final']:.4g}, the input's {losses['start']:.4g} (a rise of more than warn_loss_rise="
            f"{settings.warn_loss_rise:g}); check its accuracy. ")
    allowed = settings.warn_loss_rise
    if losses["retrained"] - losses["start"] > allowed and losses["final"] - losses["retrained"] <= allowed:
        cause = (f"The prior itself took weights the network needs while retraining: the float network's loss had "
                 f"risen to {losses['retrained']:.4g} before snapping and pruning (stored at "
                 f"{report.compression_rate:.1f}x). If its accuracy fell, lower weight_decay or the retraining's "
                 f"step (learning_rate={settings.learning_rate:g}).")
    elif snapped_rate is not None and settings.min_rate is not None and snapped_rate < settings.min_rate:
        left_out = [layer for layer in report.layers if not layer.quantized]
        share = f" (the {sum(layer.size for layer in left_out)} weights left out of the mask take " \
            f"{_floor_share(sum(layer.bits for layer in left_out), report.size, settings.min_rate):.0f} % of the " \
            f"bits it allows)" if left_out else ""
        cause = (f"The snapped network stored at {snapped_rate:.1f}x, below its floor min_rate={settings.min_rate:g}, "
                 f"and the fine-tune pruned it to {report.compression_rate:.1f}x: the floor may be too high for a "
                 f"network of {report.size} weights{share}. If its accuracy fell, pass a lower min_rate (networks "
                 f"of a few thousand weights keep their accuracy at 20) or min_rate=None.")
    else:
        cause = (f"The prior itself (stored at {report.compression_rate:.1f}x without pruning to a floor) took "
                 f"weights the network needs. If its accuracy fell, train longer (steps, finetune_steps: the "
                 f"defaults if they were lowered) or lower weight_decay.")
    warnings.warn(rise + cause, CompressionWarning, stacklevel=3)


def auto_min_rate(num_weights: int, left_out: int = 0) -> float:
    """``min_rate="auto"``: 40 up to 18 000 quantised weights, then 40·√(N / 18 000), at most 64, for the
    quantised leaves; with ``left_out`` floating weights outside the mask (32 bits each), the whole
    network's rate at which the quantised leaves store at exactly that."""
    growth = math.sqrt(max(1.0, num_weights / AUTO_MIN_RATE_SIZE))
    return whole_network_rate(min(AUTO_MIN_RATE_CAP, DEFAULT_MIN_RATE * growth), num_weights, left_out)


def whole_network_rate(rate: float, quantised: int, left_out: int) -> float:
    """The rate of ``quantised`` weights stored at ``rate`` together with ``left_out`` stored at 32 bits."""
    return float(rate) if not left_out else float((quantised + left_out) / (quantised / rate + left_out))


def _rate_bound(value: Any, name: str, auto: Callable[[], float]) -> Optional[float]:
    """A validated ``min_rate`` or ``max_rate``: None, a number > 0, or ``"auto"`` (then ``auto()``)."""
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(f"soft_share_compress: {name} must be 'auto', a number > 0 or None, got {value!r}.")
        return auto()
    return None if value is None else _positive(value, name)


def _settings(num_examples: Any, batches: Batches, options: dict) -> _Settings:
    """The defaults, from the data's size: τ = 0.01 / N; 60 epochs of retraining, 80 (at least 6000 steps) of
    fine-tuning."""
    n = _positive(num_examples, "num_examples", integer=True)
    epochs = batches.steps_per_epoch
    defaults = {
        "steps": max(1000, 60 * epochs), "finetune_steps": max(6000, 80 * epochs), "weight_decay": 0.01 / n,
        "num_components": 8, "zero_mixing": 0.997, "learning_rate": 1e-2, "finetune_learning_rate": 3e-2,
        "codebook_learning_rate": 1e-3, "mixture_learning_rate": 1e-2,
    }
    values = {name: defaults[name] if options.get(name) is None else options[name] for name in defaults}
    for name in ("steps", "finetune_steps", "num_components"):
        values[name] = _positive(values[name], name, integer=True)
    for name in ("weight_decay", "learning_rate", "finetune_learning_rate", "codebook_learning_rate",
                 "mixture_learning_rate"):
        values[name] = _positive(values[name], name)
    values["zero_mixing"] = _positive(values["zero_mixing"], "zero_mixing", fraction=True)
    if values["num_components"] < 2:
        raise ValueError(f"soft_share_compress: num_components must be >= 2, got {values['num_components']}.")
    far_sigmas = _positive(options["far_sigmas"], "far_sigmas")
    kl_threshold = options["kl_threshold"]
    if isinstance(kl_threshold, bool) or not isinstance(kl_threshold, numbers.Real) or not float(kl_threshold) >= 0:
        raise ValueError(f"soft_share_compress: kl_threshold must be a number >= 0, got {kl_threshold!r}.")
    quantised, left_out = options["num_weights"], options["left_out"]
    min_rate = _rate_bound(options["min_rate"], "min_rate", lambda: auto_min_rate(quantised, left_out))
    max_rate = _rate_bound(options["max_rate"], "max_rate",
                           lambda: max(whole_network_rate(DEFAULT_MAX_RATE, quantised, left_out), min_rate or 0.0))
    if min_rate is not None and max_rate is not None and max_rate < min_rate:
        raise ValueError(f"soft_share_compress: max_rate must be >= min_rate, got max_rate={max_rate!r} and "
                         f"min_rate={min_rate!r}.")
    warn_loss_rise = options["warn_loss_rise"]
    if warn_loss_rise is not None:
        warn_loss_rise = _positive(warn_loss_rise, "warn_loss_rise")
    return _Settings(prior=options["prior"], kl_threshold=float(kl_threshold), far_sigmas=far_sigmas,
                     min_rate=min_rate, max_rate=max_rate, warn_loss_rise=warn_loss_rise, **values)


def soft_share_compress(
    loss_fn: Callable[[Any, Any], jax.Array],
    params: Any,
    batches: Iterable[Any],
    *,
    num_examples: int,
    mask: Mask = None,
    num_components: Optional[int] = None,
    zero_mixing: Optional[float] = None,
    weight_decay: Optional[float] = None,
    prior: MixturePrior = DEFAULT_PRIOR,
    steps: Optional[int] = None,
    finetune_steps: Optional[int] = None,
    learning_rate: Optional[float] = None,
    finetune_learning_rate: Optional[float] = None,
    codebook_learning_rate: Optional[float] = None,
    mixture_learning_rate: Optional[float] = None,
    kl_threshold: float = DEFAULT_KL_THRESHOLD,
    far_sigmas: float = DEFAULT_FAR_SIGMAS,
    min_rate: Union[float, str, None] = "auto",
    max_rate: Union[float, str, None] = "auto",
    warn_loss_rise: Optional[float] = DEFAULT_WARN_LOSS_RISE,
    validation: Optional[Iterable[Any]] = None,
    callback: Optional[Callable[[str, int, int], None]] = None,
) -> SoftShareCompressed:
    """Compresses a trained network with soft weight sharing: retrain, snap, fine-tune, count.

    Runs Ullrich et al.'s retraining under a learned mixture prior (on each leaf's weights
    divided by their root mean square, so that one mixture fits every layer; the zero
    component's proportion π_0 steered so that the snapped network's storage rate stays
    between ``min_rate`` and ``max_rate``), merges and
    snaps the weights (the zero component gives exact zeros), fine-tunes the quantised
    network with its zeros fixed and one small codebook per leaf (Han et al.'s trained
    quantisation), and counts the storage as Han et al. The defaults need no tuning; every
    one can be overridden. See the guide (docs/soft-sharing.md) for what each setting does.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, the data term, a mean over the batch
        (no regulariser). It is jitted. A sum over the batch (found by giving it the first
        batch twice) is refused unless ``weight_decay`` is given: the default assumes a mean.
      params: the trained network (any pytree; floating leaves are trained, others kept):
        trainable parameters only. Layer state such as BatchNorm's running statistics (Flax's
        ``batch_stats``, an ``nnx.BatchStat``, an Equinox ``State`` or ``StateIndex``) is
        refused: close over it in ``loss_fn``. Concrete arrays: not under ``jax.jit``.
      batches: an iterable of batches (pytrees of arrays with a leading batch axis), possibly
        endless. A finite one is restarted when it can be iterated again, else its first
        epoch is replayed.
      num_examples: N, the number of training examples (sets τ's scale and the epoch length).
      mask: optax-style mask of the leaves to quantise (default: every floating leaf, biases
        and normalisation scales included, which kept the accuracy best on the networks
        measured); the others are fine-tuned as floats and stored at 32 bits.
      num_components: K of the mixture, the zero component included (default 8: with the
        filler zero, 3-bit codebook indices).
      zero_mixing: π_0, the zero component's proportion at the start; it sets the sparsity
        and is steered by the rate control once τ is warmed up (default 0.997).
      weight_decay: τ of the prior on the normalised weights (default 0.01 / num_examples),
        warmed up over 20 % of the steps, held, and raised tenfold over the second half.
      prior: the hyperpriors in normalised units (default: σ ≈ 0.25 for the non-zero
        components, σ_0 ≈ 0.05 for the zero component).
      steps: retraining steps (default max(1000, 60 epochs)).
      finetune_steps: fine-tuning steps after snapping (default max(6000, 80 epochs)).
      learning_rate: Adam's step on the normalised weights while retraining (default 1e-2).
      finetune_learning_rate: Adam's step on the normalised weights while fine-tuning (default 3e-2),
        held while the fine-tune prunes (its first half), then decayed to 0 on a cosine.
      codebook_learning_rate: Adam's step on the codebooks while fine-tuning (default 1e-3).
      mixture_learning_rate: Adam's step on the mixture while retraining (default 1e-2).
      kl_threshold: merging threshold of :func:`optreg.quantize`.
      far_sigmas: k of the diagnostics (weights farther than k·σ from their component).
      min_rate: a floor on the compression rate (Han et al.'s count): while retraining, π_0 is
        raised when the snapped network stores below it; if it still does after snapping, the
        fine-tune prunes the least salient weights gradually until it does. Default ``"auto"``:
        40 for a network of up to 18 000 quantised weights, 40·√(N / 18 000) beyond, at most 64
        (from ~46 000 weights), for the quantised leaves: leaves left out of ``mask`` add their
        32 bits per weight on top, and the whole network's floor is lowered to match (a number is
        the whole network's floor, refused when those leaves alone rule it out); None: only what
        the prior decided. Networks of a few thousand weights keep their accuracy at 20, not at
        40 (the guide, docs/soft-sharing.md, has the measurements).
      max_rate: a ceiling on the rate while retraining: above it π_0 is lowered, so that a large
        network the prior would compress further keeps more weights (compressing further costs
        accuracy). Default ``"auto"``: 80 for the quantised leaves (lowered for the whole network
        like ``min_rate``'s), or ``min_rate`` if that is higher; a number sets it; None: no ceiling.
      warn_loss_rise: a :class:`optreg.CompressionWarning` is issued when the stored network's
        mean loss on the first training batches exceeds the input's by more than this
        (``losses["final"] − losses["start"]``, in ``loss_fn``'s units); it says whether the
        floor made the fine-tune prune (then the floor may be too high for the network) and what
        to change. Default 0.05, for a mean cross-entropy in nats; None: no check.
      validation: held-out batches (a finite iterable; its first 256 batches are read once). If
        given, the stored network is chosen by early stopping: the checkpoint of the fine-tune's
        second half (after its pruning) with the lowest mean ``loss_fn`` on them, instead of the
        last; ``losses["validation"]`` reports the stored network's. Default None: the last.
      callback: ``callback(phase, step, total)`` after every step (``phase`` is "retrain" or
        "finetune"), e.g. for a progress bar.

    Returns:
      A :class:`SoftShareCompressed`: ``params`` (the stored network), ``report``, ``state``,
      ``diagnostics``, ``codebooks``, ``scales``, ``retrained`` and ``losses``.

    Raises:
      ValueError, TypeError: before training, for bad arguments, leaves, batches or a ``loss_fn``
        that is not a scalar mean (named in the message, with the fix).
      FloatingPointError: when the data loss becomes non-finite while retraining or fine-tuning
        (no NaN network is returned).

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np, optreg
      >>> x = np.random.default_rng(0).normal(size=(256, 8)).astype(np.float32)
      >>> y = x @ np.linspace(-1.0, 1.0, 8).astype(np.float32)
      >>> loss = lambda p, b: jnp.mean((b[0] @ p["w"] - b[1]) ** 2)
      >>> batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 256, 32)]
      >>> out = optreg.soft_share_compress(loss, {"w": jnp.linspace(-1.0, 1.0, 8)}, batches,
      ...                                  num_examples=256, steps=200, finetune_steps=200)
      >>> out.params["w"].shape, out.report.size
      ((8,), 8)

    References:
      Ullrich, Meeds & Welling, "Soft weight-sharing for neural network compression", ICLR 2017.
      Han, Mao & Dally, "Deep compression", ICLR 2016.
      Prechelt, "Early stopping - but when?", in Neural Networks: Tricks of the Trade, Springer 1998.
    """
    layout = _Layout(params, mask)
    stream = Batches(batches, _positive(num_examples, "num_examples", integer=True))
    settings = _settings(num_examples, stream, {
        "num_components": num_components, "zero_mixing": zero_mixing, "weight_decay": weight_decay,
        "steps": steps, "finetune_steps": finetune_steps, "learning_rate": learning_rate,
        "finetune_learning_rate": finetune_learning_rate, "codebook_learning_rate": codebook_learning_rate,
        "mixture_learning_rate": mixture_learning_rate, "prior": prior, "kl_threshold": kl_threshold,
        "far_sigmas": far_sigmas, "min_rate": min_rate, "max_rate": max_rate, "warn_loss_rise": warn_loss_rise,
        "num_weights": layout.size(), "left_out": layout.size(quantised=False)})
    _check_floor_reachable(layout, settings.min_rate)
    input_loss = jax.jit(loss_fn)
    _check_loss_fn(input_loss, params, stream.held[0], weight_decay is None)
    held_out = _validation_batches(validation)
    loss = jax.jit(lambda values, batch: loss_fn(layout.params(values), batch))
    _check_leaves_get_gradient(loss, layout, stream.held[0])
    losses = {"start": _mean_loss(input_loss, params, stream.held)}
    _check_finite(losses, "start", settings)
    values, state = _retrain(layout, loss, stream, settings, callback)
    losses["retrained"] = _mean_loss(loss, values, stream.held)
    _check_finite(losses, "retrained", settings)
    retrained = layout.returned(values)
    quantized = _snap(layout, values, state, settings)
    losses["snapped"] = _mean_loss(loss, quantized.params, stream.held)
    values, codebooks, keep, snapped_rate = _finetune(layout, loss, stream, values, quantized.params, settings,
                                                      callback, held_out)
    final = _meet_floor(layout, _rounded(values, codebooks, keep, False), settings)
    losses["final"] = _mean_loss(loss, final, stream.held)
    _check_finite(losses, "final", settings)
    if held_out is not None:
        losses["validation"] = _mean_loss(loss, final, held_out)
    stored = layout.returned(final)
    mask_tree = layout.mask_tree()
    report = compression_report(stored, mask=mask_tree)
    _warn_if_loss_rose(losses, snapped_rate, report, settings)
    return SoftShareCompressed(
        stored, report, state._replace(mask=jax.tree.map(jnp.asarray, mask_tree)), _relabel(layout, quantized),
        _codebooks(layout, stored), _scales(layout), retrained, losses,
    )
