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

    Raises:
      TypeError: when called with a step count instead of params, which is what
        ``optax.inject_hyperparams`` does to a function it takes for a schedule:
        list the mask in ``static_args``.

    Example:
      >>> import jax.numpy as jnp, optreg
      >>> optreg.decay_mask({"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}})
      {'Dense_0': {'bias': False, 'kernel': True}}

    References:
      Zhang, Lipton, Li & Smola, *Dive into Deep Learning*, §3.7 (the bias is usually not regularized).
    """
    leaves = jax.tree.leaves(params)
    if (
        jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(params))
        and len(leaves) == 1
        and np.ndim(leaves[0]) == 0
        and np.issubdtype(getattr(leaves[0], "dtype", np.asarray(leaves[0]).dtype), np.integer)
    ):
        raise TypeError(
            "decay_mask was called with a scalar integer (a step count), not the params. optax.inject_hyperparams "
            "takes every function argument for a schedule: list the mask in static_args, e.g. "
            "optax.inject_hyperparams(optreg.per_layer_decay, static_args=('q', 'weight_decays', 'mask'))."
        )

    def decide(path: tuple, leaf: Any) -> bool:
        names = path_to_string(path).split("/")
        if STATISTICS_COLLECTIONS.intersection(names) or names[-1] in UNDECAYED_NAMES:
            return False
        return is_floating(leaf) and np.ndim(leaf) >= 2

    return jax.tree_util.tree_map_with_path(decide, params)
