"""Proximal operators on arrays and pytrees, as ``jaxopt.prox``.

    prox_{s,Ω}(x) = argmin_z ½‖z − x‖² + s·Ω(z)

* :func:`prox_lq` — Ω = (1/q)·Σ|z|^q elementwise (q = 0: the L0 count), on an array;
* :func:`tree_prox_lq` — the same on every floating leaf of a pytree;
* :func:`prox_elastic_net` — Ω = l1·‖z‖₁ + (l2/2)·‖z‖², on a pytree;
* :func:`prox_group_lasso` — Ω = Σ_g ‖z_g‖₂, groups by ``axis``, on a pytree.

jaxopt's operators by its names and its signature ``prox(x, hyperparams=None,
scaling=1.0)``, so that code written for ``jaxopt.prox`` runs unchanged:
:func:`prox_none`, :func:`prox_lasso`, :func:`prox_non_negative_lasso`,
:func:`prox_ridge`, :func:`prox_non_negative_ridge`,
:func:`make_prox_from_projection`; :func:`prox_elastic_net` also takes
jaxopt's ``(x, (lam, gam))`` and ``scaling=``, and :func:`prox_group_lasso`
its ``(x, l2reg, scaling)``.

With s = learning_rate·λ each is the proximal-gradient step for optreg's
penalty with strength λ (the transforms ``optreg.proximal_lq``,
``optreg.proximal_elastic_net``, ``optreg.proximal_group_lasso`` apply them
after an optax optimizer). Strengths are one value for every leaf or a
pytree with x's structure, as jaxopt's hyperparameters. Every operator is
differentiable in x and in its strengths (forward and reverse mode).

References:
  Parikh & Boyd, "Proximal Algorithms", Foundations and Trends in Optimization, 2014.
"""

from optreg._group_lasso import prox_group_lasso
from optreg._prox_jaxopt import (
    make_prox_from_projection,
    prox_lasso,
    prox_non_negative_lasso,
    prox_non_negative_ridge,
    prox_none,
    prox_ridge,
)
from optreg._prox_operators import prox_elastic_net, prox_lq, tree_prox_lq

__all__ = [
    "make_prox_from_projection",
    "prox_elastic_net",
    "prox_group_lasso",
    "prox_lasso",
    "prox_lq",
    "prox_non_negative_lasso",
    "prox_non_negative_ridge",
    "prox_none",
    "prox_ridge",
    "tree_prox_lq",
]
