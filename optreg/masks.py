"""The usual "decay kernels, not biases or norm parameters" mask."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from optreg._tree import is_floating, path_to_string

#: Leaf names that are never decayed by :func:`decay_mask`.
UNDECAYED_NAMES = frozenset({"bias", "scale", "mean", "var"})
#: Collections that hold statistics, not trainable weights.
STATISTICS_COLLECTIONS = frozenset({"batch_stats", "cache", "intermediates"})


def decay_mask(params: Any) -> Any:
    """True for leaves that should be decayed: floating arrays with ndim >= 2,
    not named ``bias``/``scale``/``mean``/``var``, and not under ``batch_stats``.

    This is the rule of timm's ``param_groups_weight_decay`` (no decay for
    1-D parameters and biases) and fastai's ``wd_bn_bias=False``. It is a
    callable, so it works as ``mask=`` in optreg and in optax (e.g.
    ``optax.adamw(1e-3, mask=optreg.decay_mask)``), on linen variable dicts
    and NNX states alike.

    Args:
      params: any pytree of arrays.

    Returns:
      A pytree of Python bools with the structure of ``params``.
    """

    def decide(path: tuple, leaf: Any) -> bool:
        names = path_to_string(path).split("/")
        if STATISTICS_COLLECTIONS.intersection(names) or names[-1] in UNDECAYED_NAMES:
            return False
        return is_floating(leaf) and np.ndim(leaf) >= 2

    return jax.tree_util.tree_map_with_path(decide, params)
