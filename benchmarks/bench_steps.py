"""The jitted steps the cases time, and the parameter trees they run on.

A *train step* is what a user's loop runs after the backward pass:
``updates, state = tx.update(grads, state, params); params = apply_updates(params, updates)``,
jitted with the params and optimizer state donated (as Flax ``TrainState``
loops and ``nnx.Optimizer`` users do). The gradients are a fixed random tree,
so only the optimizer's own cost is timed.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from bench_harness import Step


def tree_from_shapes(shapes: dict, seed: int, scale: float) -> Any:
    """Random normal arrays (NumPy-generated: no per-shape compilation) with the structure of ``shapes``."""
    leaves, treedef = jax.tree_util.tree_flatten(shapes, is_leaf=_is_shape)
    rng = np.random.default_rng(seed)
    arrays = [jnp.asarray((scale * rng.standard_normal(s, dtype=np.float32)).astype(np.float32)) for s in leaves]
    return jax.tree_util.tree_unflatten(treedef, arrays)


def _is_shape(x: Any) -> bool:
    return isinstance(x, tuple) and all(isinstance(d, int) for d in x)


def count_params(tree: Any) -> int:
    """Number of elements of a tree of arrays or of a nested dict of shape tuples."""
    leaves = jax.tree.leaves(tree, is_leaf=_is_shape)
    return int(sum(math.prod(x) if _is_shape(x) else x.size for x in leaves))


def dense_shapes(n: int, width: int = 1024) -> dict:
    """A two-layer dense tree with about ``n`` parameters (kernels of ``rows x width`` plus biases)."""
    width = min(width, max(1, n // 2))
    rows = max(1, round(n / (2 * width)))
    return {
        "params": {
            f"Dense_{i}": {"kernel": (rows, width), "bias": (width,)} for i in range(2)
        }
    }


def transformer_shapes(blocks: int = 6, d_model: int = 256, d_mlp: int = 1024, vocab: int = 2048) -> dict:
    """A linen-style transformer parameter tree: 16 leaves per block, 3 more outside (99 for 6 blocks)."""

    def dense(d_in: int, d_out: int) -> dict:
        return {"kernel": (d_in, d_out), "bias": (d_out,)}

    def norm() -> dict:
        return {"scale": (d_model,), "bias": (d_model,)}

    tree: dict = {"Embed_0": {"embedding": (vocab, d_model)}}
    for b in range(blocks):
        tree[f"Block_{b}"] = {
            "attention": {name: dense(d_model, d_model) for name in ("query", "key", "value", "out")},
            "mlp": {"Dense_0": dense(d_model, d_mlp), "Dense_1": dense(d_mlp, d_model)},
            "LayerNorm_0": norm(),
            "LayerNorm_1": norm(),
        }
    tree["LayerNorm_final"] = norm()
    return {"params": tree}


def params_and_grads(shapes: dict, seed: int = 0) -> tuple[Any, Any]:
    return tree_from_shapes(shapes, seed, 0.05), tree_from_shapes(shapes, seed + 1, 1e-3)


def lazy_params_and_grads(shapes: dict, seed: int = 0) -> Callable[[], tuple[Any, Any]]:
    """A function that builds ``params_and_grads(shapes, seed)`` on first call and then reuses it."""
    cache: dict[str, tuple[Any, Any]] = {}

    def tree() -> tuple[Any, Any]:
        if "tree" not in cache:
            cache["tree"] = params_and_grads(shapes, seed)
        return cache["tree"]

    return tree


def _copy(tree: Any) -> Any:
    return jax.tree.map(jnp.copy, tree)


class CompiledStep:
    """A zero-argument step around one ahead-of-time compiled executable.

    ``carry`` holds the arguments that are fed back (and donated); ``fixed``
    the ones that stay. ``cost`` is XLA's own cost analysis of the executable
    (``bytes accessed``, ``flops``, ``transcendentals``) plus its temporary
    buffer size (``temp bytes``), noise-free figures that explain the measured
    ratios (on CPU a temporary of more than a few MB is fresh memory every step,
    and its page faults cost about as much as writing it twice).
    """

    def __init__(self, fn: Callable[..., Any], carry: list, fixed: tuple, donate: bool, feed_back: Callable):
        donate_argnums = tuple(range(len(carry))) if donate else ()
        self.compiled = jax.jit(fn, donate_argnums=donate_argnums).lower(*carry, *fixed).compile()
        cost = self.compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
        wanted = ("bytes accessed", "flops", "transcendentals")
        self.cost = {k: float(v) for k, v in (cost or {}).items() if k in wanted}
        memory = self.compiled.memory_analysis()
        if memory is not None:
            self.cost["temp bytes"] = float(memory.temp_size_in_bytes)
        self.carry, self.fixed, self.feed_back = carry, fixed, feed_back

    def __call__(self) -> Any:
        out = self.compiled(*self.carry, *self.fixed)
        self.carry = self.feed_back(out)
        return out


def train_step(
    tx: optax.GradientTransformation,
    params: Any,
    grads: Any,
    after: Optional[Callable[[Any], Any]] = None,
) -> Step:
    """One jitted, donated optimizer step ``params <- params + tx.update(grads)``.

    Args:
      tx: the optimizer chain.
      params, grads: trees of arrays (params are copied, the copy is donated).
      after: optional function applied to the new params inside the same jit
        (e.g. a hand-written projection, what a user would write without optreg).
    """

    def step(p: Any, s: Any, g: Any) -> tuple[Any, Any]:
        updates, s = tx.update(g, s, p)
        p = optax.apply_updates(p, updates)
        if after is not None:
            p = after(p)
        return p, s

    return CompiledStep(step, [_copy(params), tx.init(params)], (grads,), True, list)


def update_only(tx: optax.GradientTransformation, params: Any, grads: Any) -> Step:
    """The transform's ``update`` alone (state donated and fed back; params and gradients fixed)."""

    def step(s: Any, g: Any, p: Any) -> tuple[Any, Any]:
        return tx.update(g, s, p)

    return CompiledStep(step, [tx.init(params)], (grads, params), True, lambda out: [out[1]])


def function_step(fn: Callable[..., Any], *args: Any) -> Step:
    """A jitted pure function of fixed arguments (e.g. ``jax.grad`` of a penalty)."""
    return CompiledStep(fn, [], args, False, lambda out: [])


def floor_step(params: Any, grads: Any) -> Step:
    """The memory-bound floor: ``p <- p + g`` over the same bytes (read 2, write 1), donated."""
    return CompiledStep(lambda p, g: jax.tree.map(jnp.add, p, g), [_copy(params)], (grads,), True,
                        lambda out: [out])
