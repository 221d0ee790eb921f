"""After soft weight sharing: merge the mixture's components, snap the weights, diagnose the snap.

:func:`quantize` turns trained weights and a learned :class:`~optreg.MixtureState` into
weights that take only the merged mixture means as values (the zero component gives
exact zeros). The snapping runs on the device, leaf by leaf, elementwise: a sharded
leaf stays sharded (also across processes) and never visits the host. Only the
mixture (K numbers) is merged on the host.

References:
  Ullrich, Meeds & Welling, "Soft weight-sharing for neural network compression", ICLR 2017
  (Algorithm 1 and §6.2: merging components, quantisation).
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from optreg import _tree
from optreg._mixture import BIG, MixtureState, in_mixture_dtype, recorded_mask
from optreg._tree import Mask

#: Merge two components when their KL separation (see :func:`merge_components`) is below this.
DEFAULT_KL_THRESHOLD = 0.5
#: A weight farther than this many σ from its most responsible component counts as "far".
DEFAULT_FAR_SIGMAS = 3.0
#: :func:`quantize` warns when a layer has more than this fraction of far weights.
DEFAULT_FAR_WARNING = 0.01


class SnapWarning(UserWarning):
    """Snapping to the mixture means moves many weights far (more than k·σ): expect accuracy to drop."""


class LayerDiagnostics(NamedTuple):
    """How far snapping moves one quantised leaf's weights (computed before snapping).

    Attributes:
      path: the leaf's '/'-joined path.
      size: number of weights.
      zero_fraction: fraction snapped to exactly 0 (most responsible: the zero component).
      far_fraction: fraction farther than ``far_sigmas``·σ_a from μ_a, a their most responsible
        component of the merged mixture.
      max_sigmas: the largest |w − μ_a| / σ_a in the leaf.
      far_sigmas: the k used.
    """

    path: str
    size: int
    zero_fraction: float
    far_fraction: float
    max_sigmas: float
    far_sigmas: float


class Quantized(NamedTuple):
    """What :func:`quantize` returns.

    Attributes:
      params: the quantised pytree (same structure, shapes, dtypes and shardings).
      codebook: the merged means, a float32 numpy array; ``codebook[0] == 0``.
      mixture: the merged mixture as a :class:`MixtureState` (``optimizer`` None; ``count``
        and the recorded ``mask`` carried over), e.g. to plot it.
      diagnostics: one :class:`LayerDiagnostics` per quantised leaf.
    """

    params: Any
    codebook: np.ndarray
    mixture: MixtureState
    diagnostics: tuple[LayerDiagnostics, ...] = ()


# ----------------------------------------------------------------------------- host reads of tiny replicated arrays


def host(x: Any) -> np.ndarray:
    """A small replicated array on the host, also when it spans processes (its local copy)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


def mixture_state(state: Any, function: str) -> MixtureState:
    """The :class:`MixtureState` in ``state``: itself, or the one inside an optimizer state (a chain's tuple,
    ``inject_hyperparams``, ``MultiSteps``, ``masked``, a Flax ``TrainState``)."""
    if isinstance(state, MixtureState):
        return state
    found = [node for node in jax.tree.leaves(state, is_leaf=lambda node: isinstance(node, MixtureState))
             if isinstance(node, MixtureState)]
    if len(found) == 1:
        return found[0]
    if found:
        raise ValueError(f"{function}: the state holds {len(found)} MixtureStates (one per soft_share_prior); pass "
                         "the one to use, e.g. opt_state[0].")
    raise TypeError(f"{function}: state must be the MixtureState of optreg.soft_share_prior, or an optimizer state "
                    f"holding one, got {type(state).__name__} without one.")


def _check_concrete(recorded: Any, function: str) -> None:
    if isinstance(recorded, jax.core.Tracer):
        raise TypeError(f"{function}: the state is traced; {function} reads the mixture and its mask on the host "
                        "(they choose the codebook and the leaves), so call it outside jax.jit with concrete arrays.")


def recorded_flags(state: Any, params: Any, mask: Mask, function: str) -> list[bool]:
    """One bool per leaf: the state's recorded mask, or ``mask`` (they must agree when both are given). Under
    ``optax.masked`` the state recorded only the leaves ``mask`` selects: they are matched in order."""
    leaves = jax.tree.leaves(params)
    selected = _tree.resolve_mask(mask, params)
    flags = [keep and _tree.is_floating(leaf) for leaf, keep in zip(leaves, selected)]
    recorded = getattr(state, "mask", None)
    if recorded is None:
        return flags
    _check_concrete(recorded, function)
    if mask is not None and np.shape(recorded) != (len(leaves),) and np.size(recorded) == sum(map(bool, selected)):
        inner = iter([bool(host(flag)) for flag in recorded])
        return [bool(keep) and next(inner) and _tree.is_floating(leaf) for keep, leaf in zip(selected, leaves)]
    from_state = [bool(host(flag)) for flag in recorded_mask(recorded, params, function)]
    if mask is not None and from_state != flags:
        raise ValueError(
            f"{function}: mask= differs from the mask the state recorded at init (the transform's); "
            "drop mask= to use the transform's."
        )
    return [keep and _tree.is_floating(leaf) for keep, leaf in zip(from_state, jax.tree.leaves(params))]


# ----------------------------------------------------------------------------- merging (Ullrich Alg. 1)


def _separation(mean_a: float, var_a: float, mean_b: float, var_b: float) -> float:
    """KL(N(μ_a, v) ‖ N(μ_b, v)) = (μ_a − μ_b)² / (2v) at the narrower width v = min(σ_a², σ_b²).

    How far apart two components are *as quantisation levels*: the distance between their
    means in units of the narrower one's standard deviation. (The full KL also counts a
    difference in width, so two components with the same mean but different variances —
    the near-duplicates a short retraining leaves — would never merge.) Symmetric.
    """
    return (mean_a - mean_b) ** 2 / (2.0 * min(var_a, var_b))


def merge_components(
    state: MixtureState, kl_threshold: float = DEFAULT_KL_THRESHOLD
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merges the closest pair of components while their KL separation is below ``kl_threshold``.

    A merged component gets π = π_a + π_b and the π-weighted mean and variance of the
    pair; a merge with the zero component keeps μ = 0 and index 0. The closest pair is
    merged first, and the distances are recomputed after every merge.

    Returns:
      (means, variances, proportions) of the merged mixture as float64 numpy arrays;
      index 0 is the zero component.

    References:
      Ullrich, Meeds & Welling, ICLR 2017, Algorithm 1 and §6.2.
    """
    if not (isinstance(kl_threshold, (int, float)) and kl_threshold >= 0 and math.isfinite(kl_threshold)):
        raise ValueError(f"kl_threshold must be a finite number >= 0, got kl_threshold={kl_threshold!r}.")
    means = [float(v) for v in host(state.means).astype(np.float64)]
    variances = [float(v) for v in np.exp(-host(state.log_precisions).astype(np.float64))]
    logits = host(state.mixing_logits).astype(np.float64)
    weights = np.exp(logits - logits.max())
    proportions = [float(v) for v in weights / weights.sum()]
    means[0] = 0.0
    while len(means) > 1:
        best, pair = math.inf, (0, 0)
        for a in range(len(means)):
            for b in range(a + 1, len(means)):
                divergence = _separation(means[a], variances[a], means[b], variances[b])
                if divergence < best:
                    best, pair = divergence, (a, b)
        if not best < kl_threshold:
            break
        a, b = pair
        total = proportions[a] + proportions[b]
        wa, wb = (proportions[a] / total, proportions[b] / total) if total > 0 else (0.5, 0.5)
        means[a] = 0.0 if a == 0 else wa * means[a] + wb * means[b]
        variances[a] = wa * variances[a] + wb * variances[b]
        proportions[a] = total
        del means[b], variances[b], proportions[b]
    return np.array(means), np.array(variances), np.array(proportions)


# ----------------------------------------------------------------------------- snapping, on the device


@functools.partial(jax.jit, static_argnames=("far_sigmas",))
def _snap_leaf(w: jax.Array, means: jax.Array, log_precisions: jax.Array, log_mixing: jax.Array,
               far_sigmas: float) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(snapped leaf, #zeros, #far, max |w − μ_a|/σ_a): a running argmax over the K components.

    No (N, K) array: one elementwise pass per component keeps the best score, its mean and the
    weight's distance in σ's. Ties go to the lower index, as ``numpy.argmax``.
    """
    x = in_mixture_dtype(w)
    means, log_precisions, log_mixing = (a.astype(x.dtype) for a in (means, log_precisions, log_mixing))
    precisions = jnp.exp(log_precisions)
    best = jnp.full(x.shape, -jnp.inf, x.dtype)
    value = jnp.zeros_like(x)
    sigmas = jnp.zeros_like(x)
    for j in range(means.shape[0]):
        distance = x - means[j]
        score = log_mixing[j] + 0.5 * log_precisions[j] - 0.5 * jnp.minimum(precisions[j] * distance * distance, BIG)
        take = score > best
        best = jnp.where(take, score, best)
        value = jnp.where(take, means[j], value)
        sigmas = jnp.where(take, jnp.sqrt(precisions[j]) * jnp.abs(distance), sigmas)
    snapped = value.astype(w.dtype)
    return snapped, jnp.sum(snapped == 0), jnp.sum(sigmas > far_sigmas), jnp.max(sigmas, initial=0.0)


def _check_far(far_sigmas: Any, warn_far_fraction: Any) -> None:
    if not (isinstance(far_sigmas, (int, float)) and far_sigmas > 0 and math.isfinite(far_sigmas)):
        raise ValueError(f"far_sigmas must be a finite number > 0, got far_sigmas={far_sigmas!r}.")
    if warn_far_fraction is not None and not (isinstance(warn_far_fraction, (int, float))
                                              and 0 <= warn_far_fraction <= 1):
        raise ValueError(f"warn_far_fraction must be in [0, 1] or None, got {warn_far_fraction!r}.")


def quantize(
    params: Any,
    state: MixtureState,
    *,
    kl_threshold: float = DEFAULT_KL_THRESHOLD,
    mask: Mask = None,
    far_sigmas: float = DEFAULT_FAR_SIGMAS,
    warn_far_fraction: Optional[float] = DEFAULT_FAR_WARNING,
) -> Quantized:
    """Merges close components, then snaps every weight to the mean of its most responsible component.

    Weights whose most responsible component is the zero component become exactly 0. Every
    output value of a quantised leaf is one of the merged means (cast to the leaf's dtype);
    other leaves are unchanged. The snapping is jitted and elementwise on the device, so
    leaves keep their sharding. Before snapping, it measures per leaf how far each weight
    is from its component (:class:`LayerDiagnostics`) and warns (:class:`SnapWarning`) when
    a leaf has more than ``warn_far_fraction`` of its weights beyond ``far_sigmas``·σ.

    Args:
      params: the trained pytree.
      state: the :class:`MixtureState` learned with :func:`optreg.soft_share_prior`, or an
        optimizer state holding exactly one (a chain's, ``inject_hyperparams``', ``MultiSteps``',
        a Flax ``TrainState``). Its recorded mask (the transform's) selects the leaves to quantise.
      kl_threshold: merge components whose KL separation is below this (Ullrich et al.'s Alg. 1).
      mask: only for a state without a recorded mask; otherwise it must equal the recorded one,
        except under ``optax.masked``, whose mask it must be (the state recorded only those leaves).
      far_sigmas: k of the diagnostics.
      warn_far_fraction: warn above this fraction of far weights in a leaf; None: never warn.

    Returns:
      A :class:`Quantized` (params, codebook, merged mixture, diagnostics).

    Example:
      >>> import jax.numpy as jnp, optreg
      >>> params = {"w": jnp.array([0.001, -0.5, 0.52, 0.49])}
      >>> state = optreg.soft_share_prior(1e-3, 3, init_range=(-0.5, 0.5), init_std=0.05).init(params)
      >>> [round(float(v), 2) for v in optreg.quantize(params, state).params["w"]]
      [0.0, -0.5, 0.5, 0.5]

    References:
      Ullrich, Meeds & Welling, "Soft weight-sharing for neural network compression", ICLR 2017, §6.2, Alg. 1.
    """
    _check_far(far_sigmas, warn_far_fraction)
    state = mixture_state(state, "quantize")
    flags = recorded_flags(state, params, mask, "quantize")
    means, variances, proportions = merge_components(state, kl_threshold)
    means32 = means.astype(np.float32)
    log_precisions32 = (-np.log(variances)).astype(np.float32)
    log_mixing = np.log(np.maximum(proportions, 1e-300))
    log_mixing32 = (log_mixing - np.logaddexp.reduce(log_mixing)).astype(np.float32)
    mixture = (jnp.asarray(means32), jnp.asarray(log_precisions32), jnp.asarray(log_mixing32))
    leaves, treedef = jax.tree_util.tree_flatten(params)
    out, diagnostics = list(leaves), []
    for index, (path, leaf, keep) in enumerate(zip(_tree.leaf_paths(params), leaves, flags)):
        if not keep:
            continue
        snapped, zeros, far, largest = _snap_leaf(jnp.asarray(leaf), *mixture, far_sigmas=float(far_sigmas))
        out[index] = snapped
        size = max(int(np.size(leaf)), 1)
        diagnostics.append(LayerDiagnostics(path, int(np.size(leaf)), int(host(zeros)) / size, int(host(far)) / size,
                                            float(host(largest)), float(far_sigmas)))
    if warn_far_fraction is not None:
        warn_if_far(diagnostics, warn_far_fraction)
    merged = MixtureState(jnp.asarray(state.count), *mixture, None, getattr(state, "mask", None))
    return Quantized(jax.tree_util.tree_unflatten(treedef, out), means32, merged, tuple(diagnostics))


def warn_if_far(diagnostics: Any, warn_far_fraction: float) -> None:
    """Warns (:class:`SnapWarning`) naming every leaf with more than ``warn_far_fraction`` far weights."""
    far = [d for d in diagnostics if d.far_fraction > warn_far_fraction]
    if far:
        listed = ", ".join(f"{d.path} {d.far_fraction:.1%}" for d in far)
        warnings.warn(
            f"snapping moves many weights farther than {far[0].far_sigmas:g}σ from their component ({listed}): "
            "the quantised network may lose accuracy. Retrain longer or with a larger weight_decay, narrow the "
            "components (prior=MixturePrior(precision=...)), or fine-tune after quantising "
            "(optreg.soft_share_compress does).",
            SnapWarning, stacklevel=3,
        )
