"""A storage floor for :func:`optreg.soft_share_compress`: prune gradually until Han et al.'s count meets it.

The mixture prior decides how sparse a network becomes from the balance of the data
term and the prior, which differs from network to network: large layers go to a few
percent of non-zeros, a small network keeps far more. When the snapped network would
store at less than the requested rate, the fine-tune zeroes the smallest remaining
weights (normalised magnitude |w| / RMS of the leaf) in steps that follow Zhu & Gupta's
cubic schedule, so the network adapts while it is pruned, until the count meets the floor.

References:
  Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model compression",
  ICLR workshop 2018 (the gradual, cubic pruning schedule).
  Han, Mao & Dally, "Deep compression", ICLR 2016 (the storage count).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

#: Pruning steps spread over the first half of the fine-tune.
PRUNING_EVENTS = 20
PRUNING_FRACTION = 0.5


def extra_zeros_for_rate(
    magnitudes: list[Optional[np.ndarray]], rate_of: Callable[[list[Optional[np.ndarray]]], float], min_rate: float
) -> int:
    """The fewest weights to zero (smallest magnitudes first) for ``rate_of`` to reach ``min_rate``.

    Args:
      magnitudes: per float leaf, |v| of its quantised weights with 0 where already zero (None: not quantised).
      rate_of: the compression rate of a pattern (a list like ``magnitudes``, zeros where pruned).
      min_rate: the floor.

    Returns:
      0 when the pattern already meets the floor; else the count found by bisection (all
      non-zeros when even that does not reach it).
    """
    if rate_of(magnitudes) >= min_rate:
        return 0
    nonzero = np.sort(np.concatenate([m[m != 0] for m in magnitudes if m is not None]))
    low, high = 0, nonzero.size  # rate(low) < floor; rate(high) is the best there is
    while high - low > 1:
        middle = (low + high) // 2
        if rate_of(prune_below(magnitudes, nonzero[middle - 1])) >= min_rate:
            high = middle
        else:
            low = middle
    return high


def prune_below(magnitudes: list[Optional[np.ndarray]], threshold: float) -> list[Optional[np.ndarray]]:
    """``magnitudes`` with every entry <= ``threshold`` set to 0."""
    return [None if m is None else np.where(m <= threshold, 0.0, m) for m in magnitudes]


def pruning_span(steps: int) -> int:
    """The number of fine-tune steps (of ``steps``) the pruning runs over: the first :data:`PRUNING_FRACTION`."""
    return max(1, int(PRUNING_FRACTION * steps))


def zeros_due(step: int, steps: int, total: int) -> int:
    """How many extra zeros the cubic schedule asks for after ``step`` of ``steps`` fine-tune steps."""
    span = pruning_span(steps)
    done = min(1.0, (step + 1) / span)
    return int(round(total * (1.0 - (1.0 - done) ** 3)))


def is_pruning_step(step: int, steps: int) -> bool:
    span = pruning_span(steps)
    every = max(1, span // PRUNING_EVENTS)
    return step < span and (step + 1) % every == 0 or step + 1 == span


def prune_smallest(magnitudes: list[Optional[np.ndarray]], count: int) -> list[Optional[np.ndarray]]:
    """Boolean keep-masks with the ``count`` smallest non-zero magnitudes (over all leaves) removed."""
    if count <= 0:
        return [None if m is None else m != 0 for m in magnitudes]
    nonzero = np.sort(np.concatenate([m[m != 0] for m in magnitudes if m is not None]))
    if count >= nonzero.size:
        return [None if m is None else np.zeros(m.shape, bool) for m in magnitudes]
    threshold = nonzero[count - 1]
    return [None if m is None else (m > threshold) for m in magnitudes]


def rate_function(template: Callable[[list[Optional[np.ndarray]]], Any], report: Callable[[Any], Any]) -> Callable:
    """pattern -> compression rate, through ``template`` (pattern -> params) and ``report`` (params -> report)."""
    return lambda pattern: float(report(template(pattern)).compression_rate)
