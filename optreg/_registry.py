"""One list of every optreg transform: its name, a typical instance, and where it goes in a chain.

The tests (contract checks over every transform), the sharding checks and the
benchmarks all read :data:`TRANSFORMS`, so a new transform is covered by all
three once it has an entry here. ``make(params)`` builds a typical instance
for a parameter tree (some transforms need the params' structure, e.g. group
labels); ``placement`` says where the transform goes in a chain:

* ``"before"``: a loss term, chained before the optimizer (coupled), e.g.
  ``optax.chain(add_decayed_weights_q(λ), optax.adam(lr))``;
* ``"decoupled"``: between ``optax.scale_by_adam()`` and
  ``optax.scale_by_learning_rate(lr)`` (AdamW's placement);
* ``"last"``: after the learning rate, acting on the step itself (proximal,
  projected and learning-rate-independent updates);
* ``"rate"``: in the place of ``optax.scale_by_learning_rate(lr)``, after the
  preconditioner (it applies the learning rate itself), e.g.
  ``optax.chain(optax.scale_by_adam(), scale_by_learning_rate_and_prox(lr, prox))``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import optax

#: The learning rate the "last"-placed entries assume (it must equal the optimizer's).
LEARNING_RATE = 1e-3


@dataclass(frozen=True)
class Entry:
    """One transform: ``make(params)`` -> a typical instance; ``placement`` in a chain."""

    name: str
    make: Callable[[Any], optax.GradientTransformation]
    placement: str
    #: Whether the update of a leaf depends only on that leaf (no global norm or mixture).
    elementwise: bool = True


def _optreg(name: str) -> Any:
    import optreg

    return getattr(optreg, name)


def _group_labels(params: Any) -> Any:
    """16 groups by flat position for every leaf with ndim >= 2; other leaves: none."""
    import jax

    return jax.tree.map(
        lambda leaf: (np.arange(np.size(leaf)).reshape(np.shape(leaf)) % 16).astype(np.int32)
        if np.ndim(leaf) >= 2 else None,
        params,
    )


def _box(tree: Any) -> Any:
    """optax's box projection onto [-1, 1] (the typical instance of ``project``)."""
    return optax.projections.projection_box(tree, optax.tree.full_like(tree, -1.0), optax.tree.full_like(tree, 1.0))


TRANSFORMS: tuple[Entry, ...] = (
    Entry("add_decayed_weights_q", lambda p: _optreg("add_decayed_weights_q")(1e-4, 2.0), "before"),
    Entry("add_elastic_net", lambda p: _optreg("add_elastic_net")(1e-5, 1e-4), "before"),
    Entry("per_layer_decay", lambda p: _optreg("per_layer_decay")({".": 1e-4}), "before"),
    Entry("share_within_groups", lambda p: _optreg("share_within_groups")(1e-4, _group_labels(p)), "before",
          elementwise=False),
    Entry("soft_share_prior", lambda p: _optreg("soft_share_prior")(1e-6, 17), "before", elementwise=False),
    Entry("proximal_lq", lambda p: _optreg("proximal_lq")(LEARNING_RATE, 1e-4, 1.0), "last"),
    Entry("proximal_elastic_net", lambda p: _optreg("proximal_elastic_net")(LEARNING_RATE, 1e-5, 1e-4), "last"),
    Entry("project_lq_ball", lambda p: _optreg("project_lq_ball")(1e3, 2.0), "last", elementwise=False),
    Entry("proximal_group_lasso",
          lambda p: _optreg("proximal_group_lasso")(LEARNING_RATE, 1e-4, axis=0, mask=_optreg("decay_mask")), "last"),
    Entry("project", lambda p: _optreg("project")(_box), "last"),
    Entry("scale_by_learning_rate_and_prox", lambda p: _optreg("scale_by_learning_rate_and_prox")(
        LEARNING_RATE, functools.partial(_optreg("proximal_lq"), weight_decay=1e-4, q=1.0)), "rate"),
)


def entry(name: str) -> Entry:
    """The registry entry called ``name``."""
    for item in TRANSFORMS:
        if item.name == name:
            return item
    raise KeyError(f"no transform {name!r} in optreg's registry; known: {[e.name for e in TRANSFORMS]}")


def in_chain(item: Entry, params: Any, learning_rate: float = LEARNING_RATE) -> optax.GradientTransformation:
    """``item``'s typical instance placed in an Adam chain as its placement says."""
    tx = item.make(params)
    if item.placement == "before":
        return optax.chain(tx, optax.adam(learning_rate))
    if item.placement == "decoupled":
        return optax.chain(optax.scale_by_adam(), tx, optax.scale_by_learning_rate(learning_rate))
    if item.placement == "rate":
        return optax.chain(optax.scale_by_adam(), tx)
    return optax.chain(optax.adam(learning_rate), tx)
