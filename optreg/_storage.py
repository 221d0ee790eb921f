"""The storage count of a quantised network (Han, Mao & Dally 2016, as used by Ullrich et al. 2017).

:func:`compression_report` counts what storing quantised weights costs.

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
(0 is implicit). Floating leaves left out by ``mask`` are stored dense at 32
bits per entry; biases are leaves like any other; non-floating leaves (a step
counter) are not weights and are not counted. A leaf
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
from typing import Any, NamedTuple

import jax
import numpy as np

from optreg import _tree
from optreg._compression import DEFAULT_KL_THRESHOLD, Quantized, mixture_state, quantize, recorded_flags
from optreg._tree import Mask


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


def _huffman_bits(counts: np.ndarray) -> int:
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
    bits_huffman = _huffman_bits(gap_counts) + _huffman_bits(symbol_counts) + codebook
    return LayerReport(
        path, size, nonzero, nonzero / max(size, 1), distinct, True, gap_bits, fillers, index_bits, bits, bits_huffman
    )


def _counted_params(params: Any, state_or_quantized: Any, mask: Mask, kl_threshold: float) -> tuple[Any, list[bool]]:
    """(the params to count, one 'quantised' flag per leaf) for each kind of second argument."""
    if isinstance(state_or_quantized, Quantized):
        structure: Any = jax.tree_util.tree_structure(params)
        if jax.tree_util.tree_structure(state_or_quantized.params) != structure:
            raise ValueError("compression_report: the Quantized params do not have the structure of params.")
        counted = state_or_quantized.params
        return counted, recorded_flags(state_or_quantized.mixture, counted, mask, "compression_report")
    if state_or_quantized is None:
        return params, recorded_flags(None, params, mask, "compression_report")
    state = mixture_state(state_or_quantized, "compression_report")
    quantized = quantize(params, state, kl_threshold=kl_threshold, mask=mask, warn_far_fraction=None)
    return quantized.params, recorded_flags(state, params, mask, "compression_report")


def compression_report(
    params: Any,
    state_or_quantized: Any = None,
    *,
    mask: Mask = None,
    kl_threshold: float = DEFAULT_KL_THRESHOLD,
    dense_gap_bits: int = 5,
    conv_gap_bits: int = 8,
    codebook_bits: int = 32,
) -> CompressionReport:
    """Per-layer and total storage of quantised weights, counted as in Han et al. 2016.

    See the module docstring for the exact accounting. Given a state (or a :class:`Quantized`)
    the leaves counted as quantised are the transform's, recorded in the state at ``init``.

    Args:
      params: the trained pytree. With a :class:`MixtureState` it is quantised first
        (:func:`optreg.quantize`); with a :class:`Quantized` its ``params`` are counted
        (``params`` is then only used for its structure); with None, ``params`` are counted
        as they are (e.g. already quantised).
      state_or_quantized: a :class:`MixtureState` (or an optimizer state holding exactly one,
        as :func:`optreg.quantize` takes), a :class:`Quantized` or None.
      mask: the quantised leaves (others are counted dense, 32 bits each) when the state
        recorded none or with None; given with a state that recorded one, it must agree.
      kl_threshold: passed to :func:`optreg.quantize` when given a state.
      dense_gap_bits: relative-index bits for leaves with ndim <= 2 (Han: 5 for FC).
      conv_gap_bits: relative-index bits for leaves with ndim >= 3 (Han: 8 for conv).
      codebook_bits: bits per stored codebook value.

    Returns:
      A :class:`CompressionReport`; ``print(report.table())`` shows it.

    Example:
      >>> import jax.numpy as jnp, optreg
      >>> report = optreg.compression_report({"w": jnp.zeros(1000).at[3].set(0.5)})
      >>> report.bits, round(report.compression_rate)
      (38, 842)

    References:
      Han, Mao & Dally, "Deep compression", ICLR 2016.
      Ullrich, Meeds & Welling, "Soft weight-sharing for neural network compression", ICLR 2017, Appendix A.
    """
    for name, value in (("dense_gap_bits", dense_gap_bits), ("conv_gap_bits", conv_gap_bits),
                        ("codebook_bits", codebook_bits)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {name}={value!r}.")
    counted, selected = _counted_params(params, state_or_quantized, mask, kl_threshold)
    layers = []
    values = []
    for path, leaf, keep in zip(_tree.leaf_paths(counted), jax.tree.leaves(counted), selected):
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
