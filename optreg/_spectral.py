"""Spectral norm decay: the penalty (λ/2)·Σ_layers σ_max(W)² and its transform (Yoshida & Miyato 2017).

∂σ_max/∂W = u·vᵀ for the top singular pair (u, v) of W, so the transform adds
λ·σ·u·vᵀ. Like Yoshida & Miyato, it estimates (σ, u, v) by power iteration
whose vector persists in the optimizer state from one step to the next, so one
iteration per step (two matrix-vector products) suffices once the weights
change slowly. W is each kernel reshaped to (−1, fan_out) (see
:mod:`optreg._matrix`).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optreg import _hyper, _tree
from optreg._checks import require_params
from optreg._hyper import Hyperparameter
from optreg._matrix import as_matrix, axis_spec, is_matrix, matmul, scaled
from optreg._tree import Mask


class SpectralState(NamedTuple):
    """State of :func:`add_spectral_decay`.

    ``vectors`` holds, for each decayed kernel in the params' leaf order, the
    power iteration's unit vector for the shorter side of the kernel's
    (−1, fan_out) reshape W (n × m): ≈ the top left singular vector u (length
    n) when n <= m, else the top right singular vector v (length m); float32.
    The vectors are small and replicated under sharding; with
    ``optax.tree_utils.tree_map_params`` they are one non-params field (its
    ``transform_non_params`` receives the whole tuple).
    """

    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as in optax's states
    vectors: Any


def _normalized(x: jax.Array, fallback: jax.Array) -> jax.Array:
    """x/‖x‖, or ``fallback`` where x is 0 (a zero matrix, or a vector orthogonal to its range)."""
    norm = jnp.sqrt(jnp.sum(x * x))
    return jnp.where(norm > 0, x / jnp.where(norm > 0, norm, 1.0), fallback)


def _shorter_side_first(w: jax.Array) -> jax.Array:
    """W, or Wᵀ when W has more rows than columns: the iteration keeps the vector of W's shorter side.

    That vector is small, and under FSDP sharding (which splits the longer side) the product that yields it
    sums over the split dimension, one all-reduce of a short vector, so it stays replicated.
    """
    return w if w.shape[0] <= w.shape[1] else w.T


def _power_iteration(a: jax.Array, x: jax.Array, num_iterations: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """For ``a`` (r × c, r <= c) and a unit r-vector x: ``num_iterations`` steps y ← aᵀx/‖aᵀx‖, x ← ay/‖ay‖.

    Returns (new x, y, a·y = σ·x): the top singular pair of ``a`` and σ as it converges.
    """
    columns = axis_spec(a, 1)
    y = jnp.zeros((a.shape[1],), a.dtype)
    ay = jnp.zeros((a.shape[0],), a.dtype)
    for _ in range(num_iterations):
        aty = matmul(x, a, (columns,))
        y = _normalized(aty, jnp.full_like(aty, 1.0 / math.sqrt(max(a.shape[1], 1))))
        ay = matmul(a, y, (None,))  # summed over a's columns (split under FSDP): replicated, like x
        x = _normalized(ay, x)
    return x, y, ay


def _initial_vector(size: int, seed: int, index: int) -> jax.Array:
    """A fixed random unit vector (almost surely not orthogonal to the top singular vector)."""
    x = jax.random.normal(jax.random.fold_in(jax.random.key(seed), index), (size,), jnp.float32)
    return x / jnp.sqrt(jnp.sum(x * x))


def _check_count(value: Any, name: str, *, minimum: int) -> int:
    if isinstance(value, (jax.core.Tracer, jax.Array)):
        raise TypeError(f"{name} must be a static Python int, got the JAX array {value!r}; with "
                        f"optax.inject_hyperparams list it in static_args=({name!r},).")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a Python int, got {value!r} of type {type(value).__name__}.")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {name}={value!r}.")
    return int(value)


@jax.custom_jvp
def _spectral_norm(w: jax.Array) -> jax.Array:
    """σ_max of a 2-D matrix by SVD (0 for an empty one); its JVP is uᵀ·dW·v (a simple top singular value)."""
    if w.size == 0:
        return jnp.zeros([], w.dtype)
    small, s = scaled(w)
    return s * jnp.linalg.svd(small, compute_uv=False)[0]


@_spectral_norm.defjvp
def _spectral_norm_jvp(primals: tuple[jax.Array], tangents: tuple[jax.Array]) -> tuple[jax.Array, jax.Array]:
    (w,), (dw,) = primals, tangents
    if w.size == 0:
        return jnp.zeros([], w.dtype), jnp.zeros([], w.dtype)
    small, s = scaled(w)
    left, singular, right = jnp.linalg.svd(small, full_matrices=False)
    return s * singular[0], matmul(left[:, 0], matmul(dw, right[0]))


def spectral_penalty(params: Any, weight_decay: Hyperparameter, *, mask: Mask = None, count: Any = 0) -> jax.Array:
    """Ω = (λ/2)·Σ_layers σ_max(W)² over the (masked) floating leaves with ndim >= 2, σ_max by SVD.

    W is each kernel reshaped to (−1, fan_out); leaves with ndim < 2 contribute
    nothing. This is the exact loss-side form: σ_max comes from a singular
    value decomposition (cost O(n·m·min(n, m)) per kernel), and its derivative
    is λ·σ·u·vᵀ from the top singular pair (well defined where the top
    singular value is simple; elsewhere one subgradient). The transform
    :func:`add_spectral_decay` adds the same gradient from a power-iteration
    estimate instead, so it has no ``num_iterations`` or ``seed`` here.

    Args:
      params: any pytree of arrays.
      weight_decay: λ >= 0: a float, a 0-d array, or an optax schedule (evaluated at ``count``).
      mask: like optax (pytree of bools, a prefix of one, or a function of the params).
      count: the update count at which a schedule is evaluated.

    Returns:
      A float32 (or float64) scalar.

    Example:
      >>> import jax.numpy as jnp, optreg
      >>> params = {"kernel": jnp.array([[3.0, 0.0], [0.0, 1.0]]), "bias": jnp.ones(2)}
      >>> round(float(optreg.spectral_penalty(params, 1.0)), 4)  # (1/2)·3²
      4.5

    References:
      Yoshida & Miyato, "Spectral Norm Regularization for Improving the
      Generalizability of Deep Learning", arXiv:1705.10941, 2017.
    """
    _hyper.check_penalty_hyperparameter(weight_decay, "weight_decay")
    _tree.check_real(params)
    selected = _tree.resolve_mask(mask, params)
    total = jnp.zeros([], jnp.float32)
    for leaf, chosen in zip(jax.tree.leaves(params), selected, strict=True):
        if chosen and is_matrix(leaf):
            sigma = _spectral_norm(as_matrix(leaf))
            total = total + sigma * sigma
    lam = _hyper.penalty_value(weight_decay, count)
    return jnp.where(lam == 0, 0.0, lam / 2 * total)


def _decayed(params: Any, mask: Mask) -> list[bool]:
    """One flag per params leaf: selected by the mask and a floating array with ndim >= 2."""
    return [chosen and is_matrix(leaf) for leaf, chosen in
            zip(jax.tree.leaves(params), _tree.resolve_mask(mask, params), strict=True)]


def _decay_terms(params: Any, flags: list[bool], vectors: Any, weight_decay: jax.Array,
                 num_iterations: int) -> tuple[Any, tuple[jax.Array, ...]]:
    """λ·σ·u·vᵀ per decayed kernel (other leaves: the param itself, unused) and the new power-iteration vectors."""
    remaining = iter(vectors)
    terms, new_vectors = [], []
    for leaf, chosen in zip(jax.tree.leaves(params), flags):
        if not chosen:
            terms.append(leaf)
            continue
        w, s = scaled(as_matrix(leaf))
        a = _shorter_side_first(w)
        x, y, ay = _power_iteration(a, next(remaining).astype(w.dtype), num_iterations)
        factor = jnp.minimum(weight_decay * s, jnp.finfo(s.dtype).max)  # λ·σ·u·vᵀ = λ·s·(ŵv)·vᵀ, never inf·0
        outer = ay[:, None] * y[None, :] if a is w else y[:, None] * ay[None, :]  # σ·u·vᵀ of ŵ, W's layout
        terms.append((factor * outer).reshape(jnp.shape(leaf)))
        new_vectors.append(x.astype(jnp.float32))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), terms), tuple(new_vectors)


def add_spectral_decay(
    weight_decay: Hyperparameter,
    *,
    mask: Mask = None,
    num_iterations: int = 1,
    seed: int = 0,
) -> optax.GradientTransformation:
    """Adds λ·σ·u·vᵀ, the gradient of (λ/2)·σ_max(W)² per kernel, from a power iteration kept in the state.

    Spectral norm regularization (Yoshida & Miyato 2017) penalizes the largest
    singular value of each kernel (reshaped to (−1, fan_out)), which bounds
    the layer's Lipschitz constant; it shrinks only the top direction, unlike
    weight decay, which shrinks all of them. Each update runs
    ``num_iterations`` power-iteration steps v ← Wᵀu/‖Wᵀu‖, u ← Wv/‖Wv‖ from
    the stored u and adds λ·(Wv)·vᵀ = λ·σ·u·vᵀ (for a kernel with more rows
    than columns the same runs on Wᵀ: the stored vector is the one of the
    shorter side). Because the vector carries over, the estimate tracks
    σ_max as the weights move (one iteration per step, as in the paper);
    right after ``init`` it starts from a fixed random vector and
    approaches σ_max geometrically, at the rate (σ₂/σ₁)² per iteration. Leaves
    with ndim < 2 pass through untouched.

    The reshape takes the last axis as the output units (Flax's layouts). Channels-first
    convolution weights (Equinox's and PyTorch's (out, in, kh, kw)) would be paired by kernel
    width: leave them out with ``mask`` (2-D weights in either layout have the same singular
    values, so Equinox ``Linear`` weights are fine). Chain it as a loss term::

        optax.chain(optreg.add_spectral_decay(1e-3, mask=optreg.decay_mask), optax.adam(lr))

    Cost per n × m kernel and iteration: two matrix-vector products
    (4·n·m flops, two reads of W), plus writing λ·(Wv)·vᵀ into the update.

    Args:
      weight_decay: λ >= 0: a float, a 0-d array, or an optax schedule of the
        step count (the k-th update uses ``schedule(k)``). Required.
      mask: like optax: a pytree of bools with the params' structure (or a
        prefix), or a function ``params -> pytree``, e.g. :func:`optreg.decay_mask`.
      num_iterations: power-iteration steps per update, a Python int >= 1.
      seed: seed of the initial vectors (deterministic: the same params and
        seed give the same state). With ``optax.inject_hyperparams``, list
        ``num_iterations`` and ``seed`` in ``static_args`` (optax would inject ints).

    Returns:
      An ``optax.GradientTransformation`` whose state is a :class:`SpectralState`;
      ``update`` requires ``params``.

    Raises:
      ValueError, TypeError: at construction for a bad λ, a ``num_iterations``
        that is not an int >= 1 or a ``seed`` that is not an int; at ``init``
        for a mask that does not fit the params; at ``update`` for a state built
        for other params.

    Example:
      >>> import jax.numpy as jnp, optreg
      >>> params = {"kernel": jnp.array([[3.0, 0.0], [0.0, 1.0]])}
      >>> tx = optreg.add_spectral_decay(1.0, num_iterations=20)
      >>> out, state = tx.update({"kernel": jnp.zeros((2, 2))}, tx.init(params), params)
      >>> [[round(abs(float(x)), 3) for x in row] for row in out["kernel"]]  # λ·σ·u·vᵀ = 3·e₁e₁ᵀ
      [[3.0, 0.0], [0.0, 0.0]]

    References:
      Yoshida & Miyato, "Spectral Norm Regularization for Improving the
      Generalizability of Deep Learning", arXiv:1705.10941, 2017.
      Miyato, Kataoka, Koyama & Yoshida, "Spectral Normalization for Generative
      Adversarial Networks", ICLR 2018 (the power iteration carried across steps).
    """
    _hyper.check_hyperparameter(weight_decay, "weight_decay")
    num_iterations = _check_count(num_iterations, "num_iterations", minimum=1)
    seed = _check_count(seed, "seed", minimum=0)

    def init_fn(params: Any) -> SpectralState:
        _tree.check_real(params)
        count = _hyper.init_count().count
        if not _tree.has_arrays(params):  # optax's tree_map_params placeholder: the vectors are not params
            return SpectralState(count, jnp.zeros([], jnp.float32))
        leaves = jax.tree.leaves(params)
        vectors = tuple(_initial_vector(min(as_matrix(leaf).shape), seed, index)
                        for index, (leaf, chosen) in enumerate(zip(leaves, _decayed(params, mask))) if chosen)
        return SpectralState(count, vectors)

    def update_fn(updates: Any, state: SpectralState, params: Optional[Any] = None) -> tuple[Any, SpectralState]:
        params = require_params(params, "add_spectral_decay")
        flags = _decayed(params, mask)
        listed = isinstance(state.vectors, (tuple, list))  # else init's placeholder for params without arrays
        held = tuple(state.vectors) if listed else ()
        if len(held) != sum(flags):
            raise ValueError(f"add_spectral_decay: the state holds {len(held)} vectors but the params have "
                             f"{sum(flags)} decayed kernels; initialise the state with these params and this mask.")
        lam = _hyper.value_at(weight_decay, state.count)
        added, vectors = _decay_terms(params, flags, held, lam, num_iterations)
        new_updates = _tree.map_selected(lambda g, w, t: (g + t.astype(g.dtype)).astype(g.dtype),
                                         flags, updates, params, added)
        kept = vectors if listed else state.vectors  # the placeholder state keeps its structure
        return new_updates, SpectralState(optax.safe_int32_increment(state.count), kept)

    return optax.GradientTransformation(init_fn, update_fn)
