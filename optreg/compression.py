"""After soft weight sharing: merge the mixture, snap the weights, count the bits.

:func:`quantize` turns trained weights and a learned :class:`~optreg.MixtureState`
into weights that take only the (merged) mixture means as values — weights most
responsible to the zero component become exact zeros.
:func:`compression_report` counts what storing them costs.

The accounting (Han, Mao & Dally 2016, as used by Ullrich et al. 2017)
----------------------------------------------------------------------
Every quantised leaf ("layer") is read in row-major order (``ravel``) and
stored as one sparse stream of *entries*: one entry per nonzero weight, holding

* a **relative index**: the gap to the previous entry, in ``gap_bits`` bits
  (5 for dense / fully connected layers, i.e. leaves with ndim <= 2; 8 for
  convolution kernels, ndim >= 3). A gap d >= 1 (the first entry counts from
  position −1) up to 2^b fits (stored as d − 1); a longer gap is bridged with
  ⌈d / 2^b⌉ − 1 *filler zeros*, extra entries whose value is 0, each 2^b
  positions after the previous entry;
* a **codebook index**: which of the layer's distinct values the entry holds
  (the filler value 0 is one of them when fillers exist), in ⌈log2 C⌉ bits
  (at least 1), C = number of distinct entry values.

Each layer also stores its **codebook**: 32 bits per distinct nonzero value
(0 is implicit). Leaves left out by ``mask`` (and non-floating leaves) are
stored dense at 32 bits per entry; biases are leaves like any other. A leaf
with no nonzero entry costs 0 bits: its stream is empty. The compression rate is

    rate = 32 · |W| / bits,

|W| the number of entries of all floating leaves (masked ones included).

This is the count of Han et al.'s Table 2 (bits per stored weight = index bits
+ weight bits, plus the codebook), with the filler entries counted too. The
stream is decodable as it is — given the layer's shape, entry count and
codebook size (per-layer metadata, not counted, as in Han et al.) the gaps
give every position — so no CSR row pointers are needed or counted.

The **Huffman variant** (``bits_huffman``, Han et al.'s "P+Q+H") codes both the
gaps and the codebook indices of each layer with the optimal prefix code for
that layer's frequencies (the code tables themselves are not counted); the
headline ``compression_rate`` is the fixed-length count.

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

#: Merge two components when their KL separation (see :func:`merge_components`) is below this.
DEFAULT_KL_THRESHOLD = 0.5


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
            f"{self.compression_rate_huffman:.1f}x (Huffman-coded gaps and indices)"
        )
        return "\n".join(rows)


# ----------------------------------------------------------------------------- merging (Ullrich Alg. 1)


def _separation(mean_a: float, var_a: float, mean_b: float, var_b: float) -> float:
    """KL(N(μ_a, v) ‖ N(μ_b, v)) = (μ_a − μ_b)² / (2v) at the narrower width v = min(σ_a², σ_b²).

    How far apart two components are *as quantisation levels*: the distance
    between their means in units of the narrower one's standard deviation. (The
    full KL between the two Gaussians also counts a difference in width, so two
    components with the same mean but different variances — the near-duplicates
    a short retraining leaves — would never merge.) Symmetric in a and b.
    """
    return (mean_a - mean_b) ** 2 / (2.0 * min(var_a, var_b))


def merge_components(
    state: MixtureState, kl_threshold: float = DEFAULT_KL_THRESHOLD
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merges the closest pair of components while their KL separation is below ``kl_threshold``.

    The separation of components a and b is KL(N(μ_a, v) ‖ N(μ_b, v)) =
    (μ_a − μ_b)² / (2v) with v = min(σ_a², σ_b²): with the default 0.5, means
    closer than the narrower component's σ are one quantisation level. A merged
    component gets π = π_a + π_b and the π-weighted mean and variance of the
    pair; a merge with the zero component keeps μ = 0 and index 0. The closest
    pair is merged first, and the distances are recomputed after every merge.

    Returns:
      (means, variances, proportions) of the merged mixture as float64 numpy
      arrays; index 0 is the zero component.

    References:
      Ullrich, Meeds & Welling, ICLR 2017, Algorithm 1 and §6.2 (merge components
      whose KL divergence is below a threshold, then quantise).
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


#: Weights snapped per numpy call (bounds the host memory of the (chunk, K) score array).
_SNAP_CHUNK = 1 << 16


def _snap(leaf: Any, means: np.ndarray, log_precisions: np.ndarray, log_mixing: np.ndarray) -> Any:
    """Each weight -> the mean of its most responsible component, on the host (no compilation per leaf shape).

    A jax.Array keeps its sharding; the values are the float32 ``means`` cast to the leaf's dtype.
    """
    host = np.asarray(jax.device_get(leaf))
    x = host.astype(np.float64).ravel()
    precisions = np.exp(log_precisions)
    offset = log_mixing + 0.5 * log_precisions
    index = np.empty(x.size, np.int64)
    for start in range(0, x.size, _SNAP_CHUNK):
        distance = x[start:start + _SNAP_CHUNK, None] - means
        index[start:start + _SNAP_CHUNK] = np.argmax(
            offset - 0.5 * np.minimum(precisions * distance * distance, 1e300), axis=1
        )
    snapped = means[index].reshape(host.shape).astype(host.dtype)
    return jax.device_put(snapped, leaf.sharding) if isinstance(leaf, jax.Array) else jnp.asarray(snapped)


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
      kl_threshold: merge components whose KL separation is below this (:func:`merge_components`).
      mask: the same optax-style mask as the transform's.

    Returns:
      A :class:`Quantized` (params, codebook, merged mixture).

    References:
      Ullrich, Meeds & Welling, "Soft weight-sharing for neural network compression", ICLR 2017, §6.2, Alg. 1.
    """
    means, variances, proportions = merge_components(state, kl_threshold)
    # the merged mixture in float32, and the same numbers in float64 for the snapping
    means32 = means.astype(np.float32)
    log_precisions32 = (-np.log(variances)).astype(np.float32)
    log_mixing32 = np.log(np.maximum(proportions, 1e-300)).astype(np.float32)
    selected = _tree.resolve_mask(mask, params)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    snap = [means32.astype(np.float64), log_precisions32.astype(np.float64), log_mixing32.astype(np.float64)]
    out = [
        _snap(leaf, *snap) if keep and _tree.is_floating(leaf) else leaf
        for leaf, keep in zip(leaves, selected)
    ]
    normalised = log_mixing32.astype(np.float64) - np.logaddexp.reduce(log_mixing32.astype(np.float64))
    merged = MixtureState(
        jnp.asarray(state.count), jnp.asarray(means32), jnp.asarray(log_precisions32),
        jnp.asarray(normalised, jnp.float32), None,
    )
    return Quantized(jax.tree_util.tree_unflatten(treedef, out), means32, merged)


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
    span = 2**gap_bits
    gaps = np.diff(positions, prepend=-1)  # >= 1
    fillers_before = -(-gaps // span) - 1  # filler zeros bridging each gap
    fillers = int(np.sum(fillers_before))
    entries = nonzero + fillers
    _, value_counts = np.unique(flat[positions], return_counts=True)
    symbol_counts = np.concatenate([value_counts, [fillers]]) if fillers else value_counts
    symbols = int(np.count_nonzero(symbol_counts))
    index_bits = max(1, math.ceil(math.log2(symbols))) if symbols else 0
    codebook = codebook_bits * distinct_nonzero.size
    bits = entries * (gap_bits + index_bits) + codebook
    # Huffman variant: the stored gaps (every filler's is 2^b, a nonzero's the remainder) and the indices
    stored_gaps = np.concatenate([gaps - fillers_before * span, np.full([fillers], span)])
    gap_counts = np.unique(stored_gaps, return_counts=True)[1] if entries else np.zeros([0], np.int64)
    bits_huffman = huffman_bits(gap_counts) + huffman_bits(symbol_counts) + codebook
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
