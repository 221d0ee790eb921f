"""The batches :func:`optreg.soft_share_compress` trains on: any iterable, replayed if it ends early."""

from __future__ import annotations

import collections
import math
import warnings
from typing import Any, Iterable, Iterator

import jax
import numpy as np

#: At most this many batches are kept to replay a one-shot iterator that ends before training does.
MAX_CACHED_BATCHES = 256
#: The data loss reported by soft_share_compress is the mean over this many first batches.
HELD_BATCHES = 8
_END = object()


def batch_size_of(batch: Any) -> int:
    """The leading dimension of the batch's first array leaf."""
    for leaf in jax.tree.leaves(batch):
        shape = np.shape(leaf)
        if shape:
            return int(shape[0])
    raise ValueError(
        "soft_share_compress: a batch must be a pytree of arrays with a leading batch dimension, got a batch "
        f"with leaves of shapes {[np.shape(leaf) for leaf in jax.tree.leaves(batch)]}."
    )


def _check_not_a_dataset(source: Any, num_examples: int) -> None:
    """Refuses the whole dataset, ``(x, y)``, given as the batches: arrays of different shapes, each of
    ``num_examples`` rows (a sequence of batches holds batches, not one array per field)."""
    if not isinstance(source, (tuple, list)) or len(source) < 2 or \
            not all(hasattr(item, "shape") and hasattr(item, "dtype") for item in source):
        return
    shapes = [tuple(item.shape) for item in source]
    if len(set(shapes)) > 1 and all(shape and shape[0] == num_examples for shape in shapes):
        raise TypeError(
            f"soft_share_compress: batches is a {type(source).__name__} of {len(source)} arrays of num_examples="
            f"{num_examples} rows each (shapes {shapes}): the whole dataset, not batches. Pass minibatches, e.g. "
            "[(x[i:i + 64], y[i:i + 64]) for i in range(0, len(x), 64)], or an endless generator of them.")


class Batches:
    """Endless batches from ``source``: restarted when it is re-iterable, else its first epoch replayed.

    The first ``ceil(num_examples / batch_size)`` batches (at most :data:`MAX_CACHED_BATCHES`) are
    kept; a source that ends (a one-shot iterator or generator) is then replayed from them in order.
    The first :data:`HELD_BATCHES` are read ahead: the data loss is measured on them.
    """

    def __init__(self, source: Iterable[Any], num_examples: int) -> None:
        if hasattr(source, "shape") and hasattr(source, "dtype"):
            raise TypeError(f"soft_share_compress: batches must be an iterable of batches, got one array of shape "
                            f"{tuple(source.shape)}; pass e.g. [(x[i:i + 64], y[i:i + 64]) for i in range(0, len(x), "
                            "64)].")
        _check_not_a_dataset(source, num_examples)
        try:
            self._iterator: Iterator[Any] = iter(source)
        except TypeError:
            raise TypeError(f"soft_share_compress: batches must be an iterable of batches (a list, a generator), got "
                            f"{type(source).__name__}.") from None
        self._source = source
        first = next(self._iterator, _END)
        if first is _END:
            raise ValueError("soft_share_compress: batches yielded no batch.")
        self.batch_size = batch_size_of(first)
        self.steps_per_epoch = max(1, math.ceil(num_examples / self.batch_size))
        self._limit = min(self.steps_per_epoch, MAX_CACHED_BATCHES)
        self.cache: list[Any] = [first]
        self._replay = -1
        while len(self.cache) < min(HELD_BATCHES, self._limit):
            batch = next(self._iterator, _END)
            if batch is _END:
                break
            self.cache.append(batch)
        self._queue = collections.deque(self.cache)
        self.held = list(self.cache)

    def __iter__(self) -> Batches:
        return self

    def __next__(self) -> Any:
        if self._queue:
            return self._queue.popleft()
        if self._replay >= 0:
            self._replay += 1
            return self.cache[(self._replay - 1) % len(self.cache)]
        batch = next(self._iterator, _END)
        if batch is _END:
            restarted = iter(self._source)
            batch = _END if restarted is self._iterator else next(restarted, _END)
            if batch is _END:
                self._replay = 1
                self._warn_if_short()
                return self.cache[0]
            self._iterator = restarted
        if len(self.cache) < self._limit:
            self.cache.append(batch)
        return batch

    def _warn_if_short(self) -> None:
        """A one-shot source that ended before one epoch of ``num_examples``: what is replayed is less data."""
        if len(self.cache) < self._limit:
            warnings.warn(
                f"soft_share_compress: batches ended after {len(self.cache)} batches, fewer than the "
                f"{self.steps_per_epoch} of one epoch (num_examples / batch size {self.batch_size}); they are "
                f"replayed. Pass a list or an endless generator, or the num_examples they cover.", stacklevel=5)
