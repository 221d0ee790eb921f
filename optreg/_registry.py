"""One list of every optreg transform: its name, a typical instance, and where it goes in a chain.

The tests (contract checks over every transform), the sharding checks and the
benchmarks all read :data:`TRANSFORMS`, so a new transform is covered by all
three once it has an entry here. ``kwargs(params)`` gives a typical instance's
arguments for a parameter tree (some transforms need the params' structure,
e.g. group labels); ``placement`` says where the transform goes in a chain:

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

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import optax

#: The learning rate the "last"-placed entries assume (it must equal the optimizer's).
LEARNING_RATE = 1e-3


@dataclass(frozen=True)
class Entry:
    """One transform: the public factory ``optreg.<name>``, called as ``factory(**kwargs(params))``.

    ``static`` lists the arguments that must be ``static_args`` of
    ``optax.inject_hyperparams`` (the ones fixed at trace time).
    """

    name: str
    kwargs: Callable[[Any], dict[str, Any]]
    placement: str
    static: tuple[str, ...] = ()
    #: Whether the update of a leaf depends only on that leaf (no global norm, mixture or group).
    elementwise: bool = True

    @property
    def factory(self) -> Callable[..., optax.GradientTransformation]:
        import optreg

        return getattr(optreg, self.name)

    def make(self, params: Any) -> optax.GradientTransformation:
        """The typical instance for ``params``."""
        return self.factory(**self.kwargs(params))


def _group_labels(params: Any) -> Any:
    """16 groups by flat position for every leaf with ndim >= 2; other leaves: none."""
    import jax

    return jax.tree.map(
        lambda leaf: (np.arange(np.size(leaf)).reshape(np.shape(leaf)) % 16).astype(np.int32)
        if np.ndim(leaf) >= 2 else None,
        params,
    )


def _kernels(params: Any) -> Any:
    """True for leaves with ndim >= 2 (the group lasso's units are a kernel's columns)."""
    import jax

    return jax.tree.map(lambda leaf: np.ndim(leaf) >= 2, params)


def _lasso_step(learning_rate: Any) -> optax.GradientTransformation:
    """``proximal_lq(learning_rate, 1e-4, q=1)``: the prox the drift-free form applies after its own rate."""
    import optreg

    return optreg.proximal_lq(learning_rate, 1e-4, 1.0)


def _box(tree: Any) -> Any:
    """optax's box projection onto [-1, 1] (the typical instance of ``project``)."""
    import jax
    import jax.numpy as jnp

    low = jax.tree.map(lambda leaf: jnp.full_like(leaf, -1.0), tree)  # not optax.tree.full_like: optax >= 0.2.5
    high = jax.tree.map(lambda leaf: jnp.full_like(leaf, 1.0), tree)
    return optax.projections.projection_box(tree, low, high)


TRANSFORMS: tuple[Entry, ...] = (
    Entry("add_decayed_weights_q", lambda p: {"weight_decay": 1e-4, "q": 2.0}, "before", static=("q",)),
    Entry("add_elastic_net", lambda p: {"l1": 1e-5, "l2": 1e-4}, "before"),
    Entry("per_layer_decay", lambda p: {"weight_decays": {".": 1e-4}, "q": 2.0}, "before",
          static=("weight_decays", "q")),
    Entry("share_within_groups", lambda p: {"weight_decay": 1e-4, "groups": _group_labels(p)}, "before",
          static=("groups",), elementwise=False),
    Entry("soft_share_prior", lambda p: {"weight_decay": 1e-6, "num_components": 17}, "before",
          static=("num_components", "grid_size", "refresh_every"), elementwise=False),
    Entry("proximal_lq", lambda p: {"learning_rate": LEARNING_RATE, "weight_decay": 1e-4, "q": 1.0}, "last",
          static=("q",)),
    Entry("proximal_elastic_net", lambda p: {"learning_rate": LEARNING_RATE, "l1": 1e-5, "l2": 1e-4}, "last"),
    Entry("project_lq_ball", lambda p: {"radius": 1e3, "q": 2.0}, "last", static=("q",), elementwise=False),
    Entry("add_cautious_weight_decay", lambda p: {"weight_decay": 1e-4, "q": 2.0}, "decoupled", static=("q",)),
    Entry("decay_towards", lambda p: {"anchor": "init", "weight_decay": 1e-4, "q": 2.0}, "before",
          static=("anchor", "q")),
    Entry("independent_weight_decay", lambda p: {"rate": 1e-4, "q": 2.0}, "last", static=("q",)),
    Entry("add_orthogonal_decay", lambda p: {"weight_decay": 1e-4}, "before", elementwise=False),
    Entry("add_spectral_decay", lambda p: {"weight_decay": 1e-4, "num_iterations": 1, "seed": 0}, "before",
          static=("num_iterations", "seed"), elementwise=False),
    Entry("proximal_group_lasso",
          lambda p: {"learning_rate": LEARNING_RATE, "weight_decay": 1e-4, "axis": 0, "mask": _kernels}, "last",
          static=("axis", "mask"), elementwise=False),
    Entry("project", lambda p: {"projection": _box}, "last", static=("projection",), elementwise=False),
    Entry("scale_by_learning_rate_and_prox",
          lambda p: {"learning_rate": LEARNING_RATE, "proximal": _lasso_step}, "rate", static=("proximal",)),
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
