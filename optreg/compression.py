"""After soft weight sharing: merge the mixture, snap the weights, count the bits.

:func:`quantize` turns trained weights and a learned :class:`~optreg.MixtureState`
into weights that take only the (merged) mixture means as values — weights most
responsible to the zero component become exact zeros.
:func:`compression_report` counts what storing them costs.

The accounting (Han, Mao & Dally 2016, as used by Ullrich et al. 2017)
----------------------------------------------------------------------
Every quantised leaf ("layer") is read in row-major order (``ravel``) and
stored as a sparse stream of *entries*: one entry per nonzero weight, holding

* a **relative index**: the gap to the previous entry, in ``gap_bits`` bits
  (5 for dense / fully connected layers, i.e. leaves with ndim <= 2; 8 for
  convolution kernels, ndim >= 3). A gap d >= 1 (the first entry counts from
  position −1) up to 2^b fits; a longer gap is bridged with ⌈d / 2^b⌉ − 1
  *filler zeros*, extra entries whose value is 0;
* a **codebook index**: which of the layer's distinct values the entry holds
  (the filler value 0 is one of them when fillers exist). Fixed-length codes
  cost ⌈log2 C⌉ bits each (at least 1), C = number of distinct entry values;
  the Huffman variant costs the optimal prefix code's length for the layer's
  entry-value frequencies (Han et al. Huffman-code the indices too; gaps are
  kept at fixed length here, so the Huffman figure is conservative).

Each layer also stores its **codebook**: 32 bits per distinct nonzero value
(0 is implicit). Leaves left out by ``mask`` (and non-floating leaves) are
stored dense at 32 bits per entry. Row pointers are not needed for a single
relative-index stream and are not counted. The compression rate is

    rate = 32 · |W| / bits,

|W| the number of entries of all floating leaves (masked ones included).

References:
  Han, Mao & Dally, "Deep compression: compressing deep neural networks with pruning, trained
  quantization and Huffman coding", ICLR 2016 (§2 and Fig. 2: relative indices, filler zeros).
  Ullrich, Meeds & Welling, "Soft weight-sharing for neural network compression", ICLR 2017
  (Algorithm 1 and Appendix A: merging components, quantisation, the same storage count).
"""

from __future__ import annotations

import heapq
import math
from typing import Any, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from optreg import _tree
from optreg._tree import Mask
from optreg.soft_share import MixtureState

#: Merge two components when their symmetrised KL divergence is below this.
DEFAULT_KL_THRESHOLD = 1e-2


class Quantized(NamedTuple):
    """What :func:`quantize` returns.

    Attributes:
      params: the quantised pytree (same structure, shapes and dtypes).
      codebook: the merged means, float32 numpy array; ``codebook[0] == 0``.
      mixture: the merged mixture as a :class:`MixtureState` (``optimizer`` is None,
        ``count`` is carried over), e.g. to plot it.
    """

    params: Any
    codebook: np.ndarray
    mixture: MixtureState


class LayerReport(NamedTuple):
    """Storage of one leaf (see the module docstring for the accounting)."""

    path: str
    size: int
    nonzero: int
    nonzero_fraction: float
    distinct_values: int
    quantized: bool
    gap_bits: int
    fillers: int
    index_bits: int
    bits: int
    bits_huffman: int


class CompressionReport(NamedTuple):
    """Per-layer and total storage; ``compression_rate = 32·size / bits``."""

    layers: tuple[LayerReport, ...]
    size: int
    nonzero: int
    nonzero_fraction: float
    distinct_values: int
    bits: int
    bits_huffman: int
    compression_rate: float
    compression_rate_huffman: float

    def table(self) -> str:
        """A plain-text table of the report."""
        header = f"{'layer':<28}{'size':>9}{'nonzero':>10}{'distinct':>9}{'bits':>10}{'huffman':>10}"
        rows = [header, "-" * len(header)]
        for layer in self.layers:
            rows.append(
                f"{layer.path:<28}{layer.size:>9}{layer.nonzero_fraction:>10.2%}{layer.distinct_values:>9}"
                f"{layer.bits:>10}{layer.bits_huffman:>10}"
            )
        rows.append(
            f"{'total':<28}{self.size:>9}{self.nonzero_fraction:>10.2%}{self.distinct_values:>9}"
            f"{self.bits:>10}{self.bits_huffman:>10}"
        )
        rows.append(
            f"compression rate {self.compression_rate:.1f}x (fixed-length indices), "
            f"{self.compression_rate_huffman:.1f}x (Huffman-coded indices)"
        )
        return "\n".join(rows)


# ----------------------------------------------------------------------------- merging (Ullrich Alg. 1)


def _symmetric_kl(mean_a: float, var_a: float, mean_b: float, var_b: float) -> float:
    """½[KL(a‖b) + KL(b‖a)] between two univariate Gaussians."""
    square = (mean_a - mean_b) ** 2
    return 0.25 * ((var_a + square) / var_b + (var_b + square) / var_a) - 0.5


def merge_components(
    state: MixtureState, kl_threshold: float = DEFAULT_KL_THRESHOLD
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merges the closest pair of components while their symmetrised KL is below ``kl_threshold``.

    A merged component gets π = π_a + π_b, the π-weighted mean and variance of
    the pair; a merge with the zero component keeps μ = 0 and index 0.

    Returns:
      (means, variances, proportions) of the merged mixture as float64 numpy
      arrays; index 0 is the zero component.

    References:
      Ullrich, Meeds & Welling, ICLR 2017, Algorithm 1.
    """
    if not (isinstance(kl_threshold, (int, float)) and kl_threshold >= 0 and math.isfinite(kl_threshold)):
        raise ValueError(f"kl_threshold must be a finite number >= 0, got kl_threshold={kl_threshold!r}.")
    means = [float(v) for v in np.asarray(state.means, np.float64)]
    variances = [float(v) for v in np.exp(-np.asarray(state.log_precisions, np.float64))]
    logits = np.asarray(state.mixing_logits, np.float64)
    proportions = [float(v) for v in np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()]
    means[0] = 0.0
    while len(means) > 1:
        best, pair = math.inf, (0, 0)
        for a in range(len(means)):
            for b in range(a + 1, len(means)):
                divergence = _symmetric_kl(means[a], variances[a], means[b], variances[b])
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


@jax.jit
def _snap(w: jax.Array, means: jax.Array, log_precisions: jax.Array, log_mixing: jax.Array) -> jax.Array:
    x = w.astype(jnp.promote_types(w.dtype, jnp.float32))
    precisions = jnp.exp(log_precisions)
    score = log_mixing + 0.5 * log_precisions - 0.5 * jnp.minimum(precisions * (x[..., None] - means) ** 2, 1e30)
    return means[jnp.argmax(score, axis=-1)].astype(w.dtype)


def quantize(
    params: Any, state: MixtureState, *, kl_threshold: float = DEFAULT_KL_THRESHOLD, mask: Mask = None
) -> Quantized:
    """Merges close components, then snaps every weight to the mean of its most responsible component.

    Weights whose most responsible component is the zero component become
    exactly 0. Every output value of a selected leaf is one of the merged means
    (cast to the leaf's dtype). Unselected and non-floating leaves are unchanged.

    Args:
      params: the trained pytree.
      state: the :class:`MixtureState` learned with :func:`optreg.soft_share_prior`.
      kl_threshold: merge components whose symmetrised KL divergence is below this.
      mask: the same optax-style mask as the transform's.

    Returns:
      A :class:`Quantized` (params, codebook, merged mixture).

    References:
      Ullrich, Meeds & Welling, "Soft weight-sharing for neural network compression", ICLR 2017, §6.2, Alg. 1.
    """
    means, variances, proportions = merge_components(state, kl_threshold)
    means32 = jnp.asarray(means, jnp.float32)
    log_precisions = jnp.asarray(-np.log(variances), jnp.float32)
    log_mixing = jnp.asarray(np.log(np.maximum(proportions, 1e-300)), jnp.float32)
    selected = _tree.resolve_mask(mask, params)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    out = [
        _snap(jnp.asarray(leaf), means32, log_precisions, log_mixing) if keep and _tree.is_floating(leaf) else leaf
        for leaf, keep in zip(leaves, selected)
    ]
    merged = MixtureState(
        jnp.asarray(state.count), means32, log_precisions, log_mixing - jax.nn.logsumexp(log_mixing), None
    )
    return Quantized(jax.tree_util.tree_unflatten(treedef, out), np.asarray(means, np.float32), merged)


# ----------------------------------------------------------------------------- the storage count


def huffman_bits(counts: np.ndarray) -> int:
    """Total length of the optimal prefix (Huffman) code for symbols with these counts (1 bit if one symbol)."""
    positive = [int(c) for c in np.asarray(counts).ravel() if c > 0]
    if not positive:
        return 0
    if len(positive) == 1:
        return positive[0]
    heap = list(positive)
    heapq.heapify(heap)
    total = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        total += merged  # every symbol under this node gets one more bit
        heapq.heappush(heap, merged)
    return total


def _layer_report(path: str, leaf: np.ndarray, quantized: bool, dense_gap_bits: int, conv_gap_bits: int,
                  codebook_bits: int) -> LayerReport:
    flat = np.asarray(leaf, np.float32).ravel()
    size = flat.size
    positions = np.flatnonzero(flat)
    nonzero = positions.size
    distinct_nonzero = np.unique(flat[positions]) if nonzero else np.zeros([0], np.float32)
    distinct = distinct_nonzero.size + (1 if nonzero < size else 0)
    if not quantized:
        bits = 32 * size
        return LayerReport(path, size, nonzero, nonzero / max(size, 1), distinct, False, 0, 0, 32, bits, bits)
    gap_bits = conv_gap_bits if np.ndim(leaf) >= 3 else dense_gap_bits
    gaps = np.diff(positions, prepend=-1)
    fillers = int(np.sum(-(-gaps // (2**gap_bits)) - 1)) if nonzero else 0
    entries = nonzero + fillers
    _, value_counts = np.unique(flat[positions], return_counts=True)
    symbol_counts = np.concatenate([value_counts, [fillers]]) if fillers else value_counts
    symbols = int(np.count_nonzero(symbol_counts))
    index_bits = max(1, math.ceil(math.log2(symbols))) if symbols else 0
    codebook = codebook_bits * distinct_nonzero.size
    bits = entries * (gap_bits + index_bits) + codebook
    bits_huffman = entries * gap_bits + huffman_bits(symbol_counts) + codebook
    return LayerReport(
        path, size, nonzero, nonzero / max(size, 1), distinct, True, gap_bits, fillers, index_bits, bits, bits_huffman
    )


def compression_report(
    params: Any,
    state_or_quantized: Union[MixtureState, Quantized, None] = None,
    *,
    mask: Mask = None,
    kl_threshold: float = DEFAULT_KL_THRESHOLD,
    dense_gap_bits: int = 5,
    conv_gap_bits: int = 8,
    codebook_bits: int = 32,
) -> CompressionReport:
    """Per-layer and total storage of quantised weights, counted as in Han et al. 2016.

    See the module docstring for the exact accounting.

    Args:
      params: the trained pytree. With a :class:`MixtureState` it is quantised
        first (:func:`quantize`); with a :class:`Quantized` its ``params`` are
        counted (``params`` is then only used for its structure check); with
        None, ``params`` are counted as they are (e.g. already quantised).
      state_or_quantized: a :class:`MixtureState`, a :class:`Quantized` or None.
      mask: leaves that were quantised (others are counted dense, 32 bits each).
      kl_threshold: passed to :func:`quantize` when given a state.
      dense_gap_bits: relative-index bits for leaves with ndim <= 2 (Han: 5 for FC).
      conv_gap_bits: relative-index bits for leaves with ndim >= 3 (Han: 8 for conv).
      codebook_bits: bits per stored codebook value.

    Returns:
      A :class:`CompressionReport`; ``print(report.table())`` shows it.

    References:
      Han, Mao & Dally, "Deep compression", ICLR 2016.
      Ullrich, Meeds & Welling, "Soft weight-sharing for neural network compression", ICLR 2017, Appendix A.
    """
    if isinstance(state_or_quantized, MixtureState):
        quantized_params = quantize(params, state_or_quantized, kl_threshold=kl_threshold, mask=mask).params
    elif isinstance(state_or_quantized, Quantized):
        quantized_params = state_or_quantized.params
        structure: Any = jax.tree_util.tree_structure(params)
        if jax.tree_util.tree_structure(quantized_params) != structure:
            raise ValueError("compression_report: the Quantized params do not have the structure of params.")
    elif state_or_quantized is None:
        quantized_params = params
    else:
        raise TypeError(
            "state_or_quantized must be a MixtureState, a Quantized (from optreg.quantize) or None, "
            f"got {type(state_or_quantized).__name__}."
        )
    for name, value in (("dense_gap_bits", dense_gap_bits), ("conv_gap_bits", conv_gap_bits),
                        ("codebook_bits", codebook_bits)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {name}={value!r}.")
    selected = _tree.resolve_mask(mask, quantized_params)
    layers = []
    values = []
    for path, leaf, keep in zip(_tree.leaf_paths(quantized_params), jax.tree.leaves(quantized_params), selected):
        if not _tree.is_floating(leaf):
            continue
        array = np.asarray(jax.device_get(leaf)).astype(np.float32)
        layers.append(_layer_report(path, array, keep, dense_gap_bits, conv_gap_bits, codebook_bits))
        if keep:
            values.append(np.unique(array))
    size = sum(layer.size for layer in layers)
    nonzero = sum(layer.nonzero for layer in layers)
    distinct = int(np.unique(np.concatenate(values)).size) if values else 0
    bits = max(sum(layer.bits for layer in layers), 1)
    bits_huffman = max(sum(layer.bits_huffman for layer in layers), 1)
    return CompressionReport(
        tuple(layers), size, nonzero, nonzero / max(size, 1), distinct, bits, bits_huffman,
        32 * size / bits, 32 * size / bits_huffman,
    )
