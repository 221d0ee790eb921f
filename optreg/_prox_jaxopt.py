"""jaxopt's proximal operators, by its names and its signature ``prox(x, hyperparams=None, scaling=1.0)``.

Each solves argmin_y ½‖x − y‖² + scaling·g(y) for one of jaxopt's penalties g,
on a pytree ``x``, with the strength one value for every leaf or a pytree with
``x``'s structure, so that code and tests written for ``jaxopt.prox`` run on
``optreg.prox`` unchanged. Unlike jaxopt, a concrete negative strength or
``scaling`` is an error (a traced one acts as 0), a single integer array is
refused rather than rounded, and every operator is differentiable in ``x`` and
in its strength. The L1 and squared-L2 operators are :func:`optreg.prox.prox_lq`
with q = 1 and q = 2; :func:`optreg.prox.prox_elastic_net` and
:func:`optreg.prox.prox_group_lasso` take jaxopt's forms as well as their own.

References:
  Parikh & Boyd, "Proximal Algorithms", Foundations and Trends in Optimization, 2014 (§6.5).
  Blondel et al., "Efficient and modular implicit differentiation", NeurIPS 2022 (jaxopt).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from optreg._numerics import compute_dtype
from optreg._prox_operators import prox_lq_unchecked, scaled_strengths
from optreg._strengths import clip_negative


def _map(x: Any, strengths: list[Any], function: Callable[[jax.Array, jax.Array], jax.Array]) -> Any:
    """``function(leaf, strength)`` on every floating leaf in its compute dtype, cast back; the rest pass."""
    leaves, treedef = jax.tree_util.tree_flatten(x)
    out = []
    for leaf, s in zip(leaves, strengths):
        if s is None:
            out.append(leaf)
            continue
        leaf = jnp.asarray(leaf)
        compute = compute_dtype(leaf.dtype)
        s = clip_negative(s.astype(compute))  # a traced negative strength acts as 0
        out.append(function(leaf.astype(compute), s).astype(leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


def prox_none(x: Any, hyperparams: Any = None, scaling: Any = 1.0) -> Any:
    """The proximal operator of g = 0: the identity, ``x`` itself.

    Args:
      x: any pytree.
      hyperparams: ignored.
      scaling: ignored.

    Returns:
      ``x``.

    Example:
      >>> import jax.numpy as jnp
      >>> from optreg.prox import prox_none
      >>> prox_none(jnp.array([1.0, -2.0])).tolist()
      [1.0, -2.0]

    References:
      Parikh & Boyd, "Proximal Algorithms", 2014 (§1.1).
    """
    del hyperparams, scaling
    return x


def prox_lasso(x: Any, l1reg: Any = None, scaling: Any = 1.0) -> Any:
    """Soft thresholding: argmin_y ½‖x − y‖² + scaling·l1reg·‖y‖₁ = sign(x)·max(|x| − scaling·l1reg, 0).

    :func:`optreg.prox.tree_prox_lq` with q = 1 and scale = scaling·l1reg.

    Args:
      x: a floating array or a pytree of them (non-floating leaves of a pytree pass through).
      l1reg: >= 0 (default 1): one number or array for every leaf, or a pytree with ``x``'s
        structure (or a prefix of it) whose leaves broadcast against ``x``'s.
      scaling: one number >= 0 (a step size).

    Returns:
      The structure, shapes and dtypes of ``x``.

    Raises:
      ValueError, TypeError: a negative or NaN concrete ``l1reg`` or ``scaling``, an ``l1reg``
        that does not fit ``x``, or a single non-floating array.

    Example:
      >>> import jax.numpy as jnp
      >>> from optreg.prox import prox_lasso
      >>> prox_lasso(jnp.array([-2.0, 0.3, 1.5]), 0.5).tolist()
      [-1.5, 0.0, 1.0]

    References:
      Tibshirani, "Regression shrinkage and selection via the lasso", JRSS-B 1996.
      Parikh & Boyd, "Proximal Algorithms", 2014 (§6.5.2).
    """
    return _map(x, scaled_strengths(l1reg, scaling, x, "l1reg"), lambda v, s: prox_lq_unchecked(v, s, 1.0))


def prox_non_negative_lasso(x: Any, l1reg: Any = None, scaling: Any = 1.0) -> Any:
    """argmin_{y >= 0} ½‖x − y‖² + scaling·l1reg·‖y‖₁ = max(x − scaling·l1reg, 0).

    Args:
      x, l1reg, scaling: as in :func:`prox_lasso`.

    Returns / Raises:
      As :func:`prox_lasso`.

    Example:
      >>> import jax.numpy as jnp
      >>> from optreg.prox import prox_non_negative_lasso
      >>> prox_non_negative_lasso(jnp.array([-2.0, 0.3, 1.5]), 0.5).tolist()
      [0.0, 0.0, 1.0]

    References:
      Parikh & Boyd, "Proximal Algorithms", 2014 (§6.5.2; the L1 norm plus the orthant's indicator).
    """
    return _map(x, scaled_strengths(l1reg, scaling, x, "l1reg"), lambda v, s: jnp.where(v > s, v - s, 0.0))


def prox_ridge(x: Any, l2reg: Any = None, scaling: Any = 1.0) -> Any:
    """argmin_y ½‖x − y‖² + (scaling·l2reg/2)·‖y‖² = x / (1 + scaling·l2reg).

    :func:`optreg.prox.tree_prox_lq` with q = 2 and scale = scaling·l2reg. (jaxopt's docstring
    writes the penalty without the ½; its result, and this one, is x / (1 + scaling·l2reg).)

    Args:
      x, scaling: as in :func:`prox_lasso`.
      l2reg: >= 0 (default 1), in the forms of ``l1reg`` there.

    Returns / Raises:
      As :func:`prox_lasso`.

    Example:
      >>> import jax.numpy as jnp
      >>> from optreg.prox import prox_ridge
      >>> prox_ridge(jnp.array([-2.0, 3.0]), 1.0).tolist()
      [-1.0, 1.5]

    References:
      Hoerl & Kennard, "Ridge regression: biased estimation for nonorthogonal problems", Technometrics 1970.
      Parikh & Boyd, "Proximal Algorithms", 2014 (§6.1.1).
    """
    return _map(x, scaled_strengths(l2reg, scaling, x, "l2reg"), lambda v, s: prox_lq_unchecked(v, s, 2.0))


def prox_non_negative_ridge(x: Any, l2reg: Any = None, scaling: Any = 1.0) -> Any:
    """argmin_{y >= 0} ½‖x − y‖² + (scaling·l2reg/2)·‖y‖² = max(x, 0) / (1 + scaling·l2reg).

    Args:
      x, scaling: as in :func:`prox_lasso`.
      l2reg: >= 0 (default 1), in the forms of ``l1reg`` there.

    Returns / Raises:
      As :func:`prox_lasso`.

    Example:
      >>> import jax.numpy as jnp
      >>> from optreg.prox import prox_non_negative_ridge
      >>> prox_non_negative_ridge(jnp.array([-2.0, 3.0]), 1.0).tolist()
      [0.0, 1.5]

    References:
      Parikh & Boyd, "Proximal Algorithms", 2014 (§6.1.1, with the orthant's indicator).
    """
    return _map(x, scaled_strengths(l2reg, scaling, x, "l2reg"),
                lambda v, s: jnp.where(v > 0, v, 0.0) / (1.0 + s))


def make_prox_from_projection(projection: Callable[..., Any]) -> Callable[..., Any]:
    """The proximal operator of a set's indicator, which is the projection onto the set.

    Args:
      projection: ``projection(x)`` or ``projection(x, hyperparams)``, e.g. one of
        ``optax.projections`` or :mod:`optreg.projections`.

    Returns:
      ``prox(x, hyperparams=None, scaling=1.0)``: ``projection(x, hyperparams)``, or
      ``projection(x)`` when ``hyperparams`` is None (``scaling`` does not change a projection).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from optreg.prox import make_prox_from_projection
      >>> prox = make_prox_from_projection(optax.projections.projection_non_negative)
      >>> prox(jnp.array([-1.0, 2.0]), scaling=0.1).tolist()
      [0.0, 2.0]

    References:
      Parikh & Boyd, "Proximal Algorithms", 2014 (§1.2: the prox of an indicator is the projection).
    """
    if not callable(projection):
        raise TypeError(f"projection must be a function of x, got {projection!r}; e.g. "
                        "optax.projections.projection_simplex.")

    def prox(x: Any, hyperparams: Optional[Any] = None, scaling: Any = 1.0) -> Any:
        del scaling
        return projection(x) if hyperparams is None else projection(x, hyperparams)

    return prox
