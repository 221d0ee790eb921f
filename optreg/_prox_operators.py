"""The elementwise prox operators (Lq and elastic net) on arrays and pytrees, with exact derivatives.

The Lq prox runs fast closed forms and iterations (:mod:`optreg._prox_roots`)
and restores the sign with a bit operation; none of that is differentiated.
A ``jax.custom_jvp`` gives the derivative of the exact operator instead, from
the implicit function theorem on the optimality condition t + s·t^(q−1) = |x|
(:func:`optreg._prox_roots.magnitude_partials`), in x and in the strength s.
Forward mode uses it directly; reverse mode (``jax.grad``, ``jacrev``) follows
from its linearity, and ``vmap`` of either works.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp

from optreg._checks import check_exponent
from optreg._numerics import compute_dtype, copysign_nonnegative
from optreg._prox_roots import magnitude, magnitude_partials
from optreg._strengths import check_scaling, clip_negative, per_leaf


def check_floating(x: jax.Array, name: str = "x") -> None:
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{name} must be a real floating array, got dtype {x.dtype}. "
            f"Cast it first, e.g. {name}.astype(jnp.float32)."
        )


def as_array(x: Any, operator: str, tree_operator: str) -> jax.Array:
    """``x`` as an array; a pytree container is a ``TypeError`` that names the pytree operator."""
    if not jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(x)) or x is None:
        raise TypeError(f"{operator} takes an array x, got a pytree {jax.tree_util.tree_structure(x)}; "
                        f"use {tree_operator} for pytrees.")
    return jnp.asarray(x)


def scaled_strengths(strength: Any, scaling: Any, x: Any, name: str) -> list[Any]:
    """One ``strength · scaling`` per leaf of ``x`` (None for non-floating leaves), checked under ``name``.

    ``strength=None`` is 1, as in jaxopt. A single array ``x`` must be floating.
    """
    if jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(x)) and x is not None:
        check_floating(jnp.asarray(x))
    check_scaling(scaling, name)
    values = per_leaf(1.0 if strength is None else strength, x, name)
    return [None if value is None else jnp.asarray(value) * scaling for value in values]


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _prox_lq_exact(x: jax.Array, s: jax.Array, q: float) -> jax.Array:
    """sign(x)·t(|x|, s) in the compute dtype, s >= 0; derivatives by :func:`_prox_lq_exact_jvp`."""
    a = jnp.abs(x)
    t = magnitude(a, s, q)  # >= 0 for every q
    # |prox(x)| <= |x| against rounding. A compare-and-select rather than clip: IEEE minimum takes
    # several instructions on x86, and in the fused Adam + prox loop every instruction counts. A
    # NaN x still gives NaN (the compare fails).
    t = jnp.where(t < a, t, a)
    return copysign_nonnegative(t, x)


@_prox_lq_exact.defjvp
def _prox_lq_exact_jvp(q: float, primals: tuple[jax.Array, jax.Array], tangents: tuple[jax.Array, jax.Array]) -> tuple[
    jax.Array, jax.Array
]:
    (x, s), (dx, ds) = primals, tangents
    z = _prox_lq_exact(x, s, q)
    along_a, along_s = magnitude_partials(jnp.abs(x), jnp.abs(z), s, q)
    # d|z| = ∂t/∂a·d|x| + ∂t/∂s·ds and z = sign(x)·|z|: dz = ∂t/∂a·dx + sign(z)·∂t/∂s·ds.
    return z, along_a * dx + jnp.sign(z) * along_s * ds


@functools.partial(jax.jit, static_argnames="q")
def prox_lq_unchecked(x: jax.Array, scale: Any, q: float) -> jax.Array:
    """:func:`prox_lq` without argument checks, for callers that checked already (transforms).

    Computed in x's compute dtype (float32 for half precision) and cast back; a
    negative ``scale`` acts as 0.
    """
    compute = compute_dtype(x.dtype)
    s = clip_negative(jnp.asarray(scale).astype(compute))
    return _prox_lq_exact(x.astype(compute), s, q).astype(x.dtype)


def prox_lq(x: Any, scale: Any, q: float) -> jax.Array:
    """Elementwise proximal operator of the Lq penalty (scale/q)·|z|^q.

    Returns argmin_z ½(z − x)² + (scale/q)·|z|^q for each element (for q = 0:
    ½(z − x)² + scale·[z ≠ 0], the L0 "norm"). With ``scale = learning_rate·λ``
    it is the proximal-gradient step for optreg's penalty (λ/q)·Σ|w|^q.

    Closed forms are used for q ∈ {0, ½, ⅔, 1, 3/2, 2, 3}; any other q > 0 is
    solved by a safeguarded Newton iteration. The result has the sign of ``x``
    (or is 0) and never a larger magnitude. Where two minimisers tie (|x|
    exactly at the threshold of q = 0 or q < 1) the result is 0.

    Derivatives: ``jax.grad``, ``jax.jvp``, ``jacfwd`` and ``jacrev`` give the
    derivative of the exact operator in ``x`` and in ``scale`` (implicit
    function theorem on t + s·t^(q−1) = |x|, t = |prox|): for example
    ∂prox/∂x = 1/(1 + s) for q = 2, 1 on the kept entries and 0 on the
    zeroed ones for q = 1. At a threshold (a kink) the derivative of the
    returned branch is given.

    Args:
      x: a real floating array. bfloat16/float16 are computed in float32 and
        cast back. For a pytree use :func:`optreg.prox.tree_prox_lq`.
      scale: s >= 0, a number or an array that broadcasts against ``x``
        without changing its shape. A concrete negative value is an error; a
        traced one that is negative at run time acts as 0 (identity).
      q: exponent >= 0, a static Python number.

    Returns:
      An array with the shape and dtype of ``x``.

    Raises:
      ValueError, TypeError: for a negative/NaN concrete ``scale``, a scale that
        does not fit ``x``, a bad ``q`` or a non-floating ``x``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from optreg.prox import prox_lq
      >>> prox_lq(jnp.array([-2.0, 0.3, 1.5]), 0.5, q=1.0)
      Array([-1.5,  0. ,  1. ], dtype=float32)
      >>> round(float(jax.grad(lambda x: prox_lq(x, 0.1, 2.0))(1.0)), 4)
      0.9091

    References:
      Parikh & Boyd, "Proximal Algorithms", Foundations and Trends in Optimization, 2014 (§6.5).
      Xu, Chang, Xu & Zhang, "L1/2 regularization: a thresholding representation theory and a fast
      solver", IEEE TNNLS 23(7), 2012 (half thresholding).
      Cao, Sun & Xu, "Fast image deconvolution using closed-form thresholding formulas of
      L_q (q = 1/2, 2/3) regularization", J. Vis. Commun. Image R. 24(1), 2013.
      Blumensath & Davies, "Iterative thresholding for sparse approximations", 2008 (hard threshold).
    """
    q = check_exponent(q, allow_zero=True)
    x = as_array(x, "prox_lq", "optreg.prox.tree_prox_lq")
    check_floating(x)
    (scale,) = per_leaf(scale, x, "scale")
    return prox_lq_unchecked(x, scale, q)


def tree_prox_lq(tree: Any, scale: Any, q: float) -> Any:
    """:func:`prox_lq` applied to every floating leaf of a pytree; other leaves pass through.

    Args:
      tree: any pytree (a Flax variable dict, an NNX state, ...).
      scale: s >= 0: one number or array for every leaf, or a pytree with
        ``tree``'s structure (or a prefix of it) whose leaves broadcast against
        the leaves of ``tree`` without changing their shapes, as jaxopt's prox
        operators take their hyperparameters.
      q: exponent >= 0, static.

    Returns:
      A pytree with the structure, shapes and dtypes of ``tree``.

    Raises:
      ValueError: for a ``scale`` that does not fit ``tree`` (the message names
        the leaf and both shapes), or a negative/NaN concrete scale.

    Example:
      >>> import jax.numpy as jnp
      >>> from optreg.prox import tree_prox_lq
      >>> out = tree_prox_lq({"w": jnp.array([0.2, -3.0]), "b": jnp.array([2.0])}, {"w": 1.0, "b": 0.5}, q=1.0)
      >>> out["w"].tolist(), out["b"].tolist()
      ([0.0, -2.0], [1.5])

    References:
      Parikh & Boyd, "Proximal Algorithms", 2014.
      Blondel et al., "Efficient and modular implicit differentiation", NeurIPS 2022 (jaxopt's pytree prox operators).
    """
    q = check_exponent(q, allow_zero=True)
    scales = per_leaf(scale, tree, "scale")
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    out = [leaf if s is None else prox_lq_unchecked(jnp.asarray(leaf), s, q) for leaf, s in zip(leaves, scales)]
    return jax.tree_util.tree_unflatten(treedef, out)


@jax.jit
def prox_elastic_net_unchecked(x: jax.Array, l1_scale: Any, l2_scale: Any) -> jax.Array:
    """The elastic-net prox of one array without argument checks (negative scales act as 0)."""
    compute = compute_dtype(x.dtype)
    values = x.astype(compute)
    l1, l2 = (clip_negative(jnp.asarray(s).astype(compute)) for s in (l1_scale, l2_scale))
    magnitude_ = jnp.maximum(jnp.abs(values) - l1, 0.0) / (1.0 + l2)
    return (jnp.sign(values) * magnitude_).astype(x.dtype)


def prox_elastic_net(x: Any, l1_scale: Any = None, l2_scale: Any = None, *, hyperparams: Any = None,
                     scaling: Any = 1.0) -> Any:
    """Elementwise proximal operator of the elastic net l1·|z| + (l2/2)·z², on a pytree.

    argmin_z ½(z − x)² + l1_scale·|z| + (l2_scale/2)·z² = soft(x, l1_scale) / (1 + l2_scale).

    With ``l1_scale = learning_rate·l1`` and ``l2_scale = learning_rate·l2`` it is
    the proximal step for :func:`optreg.elastic_net_penalty`. Its derivatives
    in ``x`` and both scales are those of the closed form (exact zeros below the
    L1 threshold, where they are 0).

    jaxopt's form is taken too, as its solvers call it: ``prox_elastic_net(x, (lam, gam),
    scaling)`` (or ``hyperparams=(lam, gam)`` and ``scaling=``; default (1, 1)) is the penalty
    scaling·lam·(‖z‖₁ + (gam/2)·‖z‖²), i.e. l1_scale = scaling·lam and l2_scale =
    scaling·lam·gam. A pair (a tuple or list of two) in the second place is always read as
    jaxopt's (lam, gam); per-leaf scales for an ``x`` that is itself a pair of leaves must then
    go in jaxopt's form.

    Args:
      x: a real floating array or a pytree of them (non-floating leaves pass
        through; half precision is computed in float32).
      l1_scale: >= 0: one number or array for every leaf, or a pytree with
        ``x``'s structure (or a prefix) whose leaves broadcast against ``x``'s.
        Left out with ``l2_scale``: jaxopt's ``hyperparams`` pair.
      l2_scale: >= 0, the same forms.
      hyperparams: jaxopt's (lam, gam), each in the forms of ``l1_scale`` (keyword-only).
      scaling: one number >= 0 multiplying both scales (keyword-only; default 1; in jaxopt's
        positional form the third argument).

    Returns:
      The structure, shapes and dtypes of ``x``.

    Raises:
      ValueError, TypeError: for a scale that does not fit ``x``, a negative/NaN concrete
        scale, or both forms (or neither pair nor ``l2_scale``) given.

    Example:
      >>> import jax.numpy as jnp
      >>> from optreg.prox import prox_elastic_net
      >>> prox_elastic_net(jnp.array([0.3, -3.0]), 0.5, 1.0).tolist()  # soft threshold, then / 2
      [0.0, -1.25]
      >>> prox_elastic_net(jnp.array([0.3, -3.0]), (0.5, 2.0)).tolist()  # jaxopt's (lam, gam): the same
      [0.0, -1.25]

    References:
      Zou & Hastie, "Regularization and variable selection via the elastic net", JRSS-B 2005.
      Parikh & Boyd, "Proximal Algorithms", 2014 (§6.5.3).
    """
    pair, scaling = _jaxopt_form(l1_scale, l2_scale, hyperparams, scaling)
    if pair is not None:
        l1 = scaled_strengths(pair[0], scaling, x, "hyperparams[0]")
        l2 = [None if a is None else a * clip_negative(jnp.asarray(g))
              for a, g in zip(l1, per_leaf(pair[1], x, "hyperparams[1]"))]
    else:
        l1 = scaled_strengths(l1_scale, scaling, x, "l1_scale")
        l2 = scaled_strengths(l2_scale, scaling, x, "l2_scale")
    leaves, treedef = jax.tree_util.tree_flatten(x)
    out = [
        leaf if a is None else prox_elastic_net_unchecked(jnp.asarray(leaf), a, b)
        for leaf, a, b in zip(leaves, l1, l2)
    ]
    return jax.tree_util.tree_unflatten(treedef, out)


def _is_pair(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and len(value) == 2


def _jaxopt_form(l1_scale: Any, l2_scale: Any, hyperparams: Any, scaling: Any) -> tuple[Optional[tuple], Any]:
    """(jaxopt's (lam, gam) or None for the l1/l2 form, the scaling), from how ``prox_elastic_net`` was called.

    jaxopt's form: ``hyperparams=``, or a pair in the second place (its solvers call
    ``prox(x, hyperparams, scaling)`` positionally: a third positional argument is then the scaling),
    or nothing (its default (1, 1)). Anything else without ``l2_scale`` is a ``TypeError`` naming both forms.
    """
    if hyperparams is not None or _is_pair(l1_scale):
        if hyperparams is not None and l1_scale is not None:
            raise TypeError("prox_elastic_net: pass either l1_scale and l2_scale, or jaxopt's hyperparams=(lam, gam), "
                            "not both.")
        pair = hyperparams if hyperparams is not None else l1_scale
        if not _is_pair(pair):
            raise TypeError(f"prox_elastic_net: hyperparams must be jaxopt's pair (lam, gam), got {pair!r}.")
        if l2_scale is not None:  # jaxopt's positional scaling
            if not (isinstance(scaling, (int, float)) and scaling == 1.0):
                raise TypeError("prox_elastic_net: jaxopt's scaling given twice (third argument and scaling=).")
            scaling = l2_scale
        return (pair[0], pair[1]), scaling
    if l2_scale is None:
        if l1_scale is None:
            return (1.0, 1.0), scaling
        raise TypeError(f"prox_elastic_net takes (x, l1_scale, l2_scale), or jaxopt's (x, (lam, gam), scaling); got "
                        f"l1_scale={l1_scale!r} and no l2_scale. Pass l2_scale, or the (lam, gam) pair.")
    return None, scaling


