"""Proximal operators on arrays and pytrees, as ``jaxopt.prox``.

    prox_{s,Ω}(x) = argmin_z ½‖z − x‖² + s·Ω(z)

* :func:`prox_lq` — Ω = (1/q)·Σ|z|^q elementwise (q = 0: the L0 count), on an array;
* :func:`tree_prox_lq` — the same on every floating leaf of a pytree;
* :func:`prox_elastic_net` — Ω = l1·‖z‖₁ + (l2/2)·‖z‖², on a pytree;
* :func:`prox_group_lasso` — Ω = Σ_g ‖z_g‖₂, groups by ``axis``, on a pytree.

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
from optreg._prox_operators import prox_elastic_net, prox_lq, tree_prox_lq

__all__ = ["prox_elastic_net", "prox_group_lasso", "prox_lq", "tree_prox_lq"]
