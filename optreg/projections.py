"""Euclidean projections on pytrees, as ``optax.projections``.

* :func:`projection_lq_ball` — onto {w : Σ|w|^q <= radius^q} for any q >= 1
  (q = ∞ included), over the whole tree or, with ``axis``, one ball per slice.

Every projection of optax (``optax.projections.projection_non_negative``,
``projection_box``, ``projection_simplex``, ...) and this one become
constraints in a chain with ``optreg.project`` / ``optreg.project_lq_ball``.

References:
  Parikh & Boyd, "Proximal Algorithms", Foundations and Trends in Optimization, 2014 (§6.5).
"""

from optreg._project import projection_lq_ball

__all__ = ["projection_lq_ball"]
