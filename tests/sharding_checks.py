"""Sharded-training checks for every optreg transform, on 8 simulated CPU devices.

``tests/test_sharding.py`` runs this file in a subprocess whose environment
sets ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before JAX starts
(the main pytest process keeps its single device). Usage::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharding_checks.py [case ...]

It prints one JSON object ``{case: {check: {"ok", "detail", "seconds"}}}``.

Layout (FSDP-style): every leaf with at least ``MIN_SHARDED_SIZE`` elements is
split along its largest dimension divisible by the mesh size; smaller leaves
(biases, counts, mixture parameters) are replicated. The optimizer state gets
the same rule, so Adam's ``mu``/``nu`` land where their parameters are.

Each case puts one optreg transform in Adam (``eps=1e-4``, so that float32
reduction-order noise in near-zero gradients is not blown up by 1/eps when
comparing trajectories). Checks:

* ``train_step``: a jitted Flax train step (params, optimizer state and batch
  sharded; ``out_shardings`` pinned, buffers donated, as a user would) gives
  the single-device result after two steps.
* ``keeps_sharding``: the optimizer update jitted *without* ``out_shardings``
  (so the shardings are what the transform's own ops produce) returns every
  params and state leaf with its input's sharding, over two updates.
* ``state_sharded``: after ``jax.jit(tx.init)`` and after the updates, every
  state leaf that mirrors a parameter (same path suffix and shape) has that
  parameter's sharding and per-device shard shape; no large state leaf is
  replicated.
* ``no_gather``: the compiled sharded update has no all-to-all,
  reduce-scatter or collective-permute, only all-reduces smaller than any
  sharded parameter and all-gathers of one scalar per device (the partial
  results of a reduction XLA has no all-reduce for, e.g. the variadic
  overflow-safe norm of ``project_lq_ball``), no parameter-sized constants (they would sit whole on
  every device), and its per-device arguments + outputs are < 1/4 of the
  single-device update's (1/8 plus the replicated biases is expected).
  Temporaries are reported, not asserted: a global norm legitimately keeps a
  shard-sized temporary that the single-device program fuses away.
* ``per_shard_data``: with parameters and gradients that differ wildly per
  shard (one shard all zero, others scaled from 1e-3 to 30), two sharded
  updates equal the single-device ones, and where the case has one, plain SGD
  with the transform equals an independent NumPy reference computed over the
  whole tree: whole-tree norms, projections, group means and mixture
  statistics are reduced over all shards.
* ``explicit_mesh``: the same update under a mesh with ``AxisType.Explicit``
  axes (what ``jax.make_mesh`` gives by default in recent JAX) traces, keeps
  shardings and matches.
* ``tree_map_params``: ``optax.tree_utils.tree_map_params``, optax's helper to
  derive optimizer-state shardings from the params', works on the chain.
"""

from __future__ import annotations

import functools
import json
import re
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import optreg
from optreg._tree import path_to_string

NUM_DEVICES = 8
AXIS = "fsdp"
MIN_SHARDED_SIZE = 1024
LEARNING_RATE = 1e-2
ADAM_EPS = 1e-4
#: Per-shard scales for :func:`per_shard_tree`: ordinary, all-zero, tiny and large blocks.
SHARD_SCALES = (1.0, 0.0, 1e-3, 30.0, 1.0, 0.1, 5.0, 0.5)
#: ``(rtol, atol)`` for sharded vs single device: reductions may add in another order.
UPDATE_TOLERANCE = (5e-5, 1e-6)
TRAIN_TOLERANCE = (1e-4, 1e-5)
REFERENCE_TOLERANCE = (1e-4, 1e-6)
CHECKS = (
    "train_step",
    "keeps_sharding",
    "state_sharded",
    "no_gather",
    "per_shard_data",
    "explicit_mesh",
    "tree_map_params",
)
#: Variants of a transform skip the (costly, transform-independent) Flax train step.
UPDATE_CHECKS = tuple(check for check in CHECKS if check != "train_step")


# ----------------------------------------------------------------------------- the layout


def fsdp_spec(shape: tuple[int, ...]) -> P:
    """Split the largest dimension divisible by the mesh size; replicate small leaves."""
    if int(np.prod(shape, dtype=np.int64)) < MIN_SHARDED_SIZE:
        return P()
    candidates = [dim for dim, size in enumerate(shape) if size % NUM_DEVICES == 0]
    if not candidates:
        return P()
    split = max(candidates, key=lambda dim: shape[dim])
    return P(*[AXIS if dim == split else None for dim in range(len(shape))])


def shardings_for(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    return jax.tree.map(lambda leaf: NamedSharding(mesh, fsdp_spec(tuple(leaf.shape))), tree)


def make_mesh(axis_type: AxisType) -> jax.sharding.Mesh:
    return jax.make_mesh((NUM_DEVICES,), (AXIS,), axis_types=(axis_type,))


def on_one_device(tree: Any) -> Any:
    return jax.device_put(tree, jax.devices()[0])


# ----------------------------------------------------------------------------- model and data


class MLP(nn.Module):
    """64 -> 256 -> 64: kernels split along dims 1 and 0; biases replicated."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(64)(nn.relu(nn.Dense(256)(x)))


MODEL = MLP()
BATCH = 64


def batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(BATCH, 64)).astype(np.float32), rng.integers(0, 64, size=BATCH)


@functools.cache
def initial_params() -> Any:
    """The MLP's parameters as NumPy arrays (computed once)."""
    return jax.device_get(jax.jit(MODEL.init)(jax.random.key(0), np.zeros((1, 64), np.float32)))


@functools.cache
def per_shard_tree(seed: int) -> Any:
    """A params-shaped tree whose blocks (one per device along the split dim) are scaled by ``SHARD_SCALES``.

    Values are N(0.5, 1) before scaling, so means over a group of weights are
    clearly nonzero.
    """
    rng = np.random.default_rng(seed)

    def draw(leaf: Any) -> np.ndarray:
        values = rng.normal(0.5, 1.0, size=leaf.shape)
        spec = fsdp_spec(tuple(leaf.shape))
        if AXIS in spec:
            split = list(spec).index(AXIS)
            blocks = np.split(values, NUM_DEVICES, axis=split)
            values = np.concatenate([b * s for b, s in zip(blocks, SHARD_SCALES)], axis=split)
        return values.astype(np.float32)

    return jax.tree.map(draw, initial_params())


def per_shard_data() -> tuple[Any, Any]:
    return per_shard_tree(1), per_shard_tree(2)


# ----------------------------------------------------------------------------- references (NumPy, float64)


def float64(tree: Any) -> Any:
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def sgd_target(params: Any, grads: Any) -> Any:
    """w − lr·g: where plain SGD goes before a projection or prox."""
    return jax.tree.map(lambda w, g: w - LEARNING_RATE * g, float64(params), float64(grads))


def tree_norm(tree: Any, q: float) -> float:
    return float(sum(np.sum(np.abs(x) ** q) for x in jax.tree.leaves(float64(tree))) ** (1.0 / q))


def project_l2(tree: Any, radius: float) -> Any:
    """Closed form: x·min(1, r/‖x‖₂), the norm over the whole tree."""
    return jax.tree.map(lambda x: x * min(1.0, radius / tree_norm(tree, 2.0)), tree)


def project_l1(tree: Any, radius: float) -> Any:
    """Duchi et al. 2008: sort |x| over the whole tree, find the threshold θ, soft-threshold."""
    magnitudes = np.sort(np.concatenate([np.abs(x).ravel() for x in jax.tree.leaves(tree)]))[::-1]
    sums = np.cumsum(magnitudes)
    last = np.nonzero(magnitudes - (sums - radius) / np.arange(1, magnitudes.size + 1) > 0)[0][-1]
    theta = (sums[last] - radius) / (last + 1)
    return jax.tree.map(lambda x: np.sign(x) * np.maximum(np.abs(x) - theta, 0.0), tree)


def per_shard_radius(q: float) -> float:
    """Half the Lq norm of the SGD target on the per-shard data, so the projection is active."""
    return 0.5 * tree_norm(sgd_target(*per_shard_data()), q)


def projection_reference(q: float, project: Callable[[Any, float], Any]) -> Callable[[Runner], str]:
    def check(runner: Runner) -> str:
        actual = runner.sgd_update()
        expected = project(sgd_target(*runner.data), per_shard_radius(q))
        assert_trees_close(actual, expected, REFERENCE_TOLERANCE, f"SGD + L{q:g} projection vs NumPy")
        return f"; SGD + whole-tree L{q:g} projection equals NumPy's (‖w‖ = {tree_norm(actual, q):.6g})"

    return check


def sphere_reference(runner: Runner) -> str:
    q, radius = 3.0, per_shard_radius(3.0)
    norm = tree_norm(runner.sgd_update(), q)
    assert abs(norm - radius) <= 1e-4 * radius, f"whole-tree L3 norm {norm} after the projection, radius {radius}"
    return f"; SGD + L3 projection lands on the whole-tree sphere (‖w‖₃ = {norm:.6g}, radius {radius:.6g})"


PROX_WEIGHT_DECAY = 0.05


def prox_reference(runner: Runner) -> str:
    actual = runner.sgd_update()
    threshold = LEARNING_RATE * PROX_WEIGHT_DECAY
    expected = jax.tree.map(lambda x: np.sign(x) * np.maximum(np.abs(x) - threshold, 0.0), sgd_target(*runner.data))
    assert_trees_close(actual, expected, REFERENCE_TOLERANCE, "SGD + L1 prox vs soft threshold")
    zeros = sum(int(np.sum(x == 0)) for x in jax.tree.leaves(actual))
    return f"; SGD + L1 prox equals the soft threshold ({zeros} exact zeros)"


GROUP_STRENGTH = 0.1
NUM_GROUPS = 3


def group_labels(params: Any) -> Any:
    """Kernels: label = flat index mod 3 (every group spans every shard); biases: no group."""
    return jax.tree.map(
        lambda leaf: (np.arange(leaf.size).reshape(leaf.shape) % NUM_GROUPS).astype(np.int32)
        if np.ndim(leaf) == 2 else None,
        params,
    )


def groups_reference(runner: Runner) -> str:
    params, grads = runner.data
    labels = jax.tree.leaves(group_labels(params), is_leaf=lambda x: x is None)
    weights = [(np.asarray(w, np.float64), lab) for w, lab in zip(jax.tree.leaves(params), labels) if lab is not None]
    means = np.array([np.concatenate([w[lab == g] for w, lab in weights]).mean() for g in range(NUM_GROUPS)])

    def step(w: np.ndarray, g: np.ndarray, lab: Optional[np.ndarray]) -> np.ndarray:
        pull = 0.0 if lab is None else 2 * GROUP_STRENGTH * (w - means[lab])
        return w - LEARNING_RATE * (g + pull)

    expected = [step(w, g, lab) for w, g, lab in zip(jax.tree.leaves(float64(params)), jax.tree.leaves(float64(grads)),
                                                     labels)]
    assert_trees_close(runner.sgd_update(), expected, REFERENCE_TOLERANCE, "SGD + group pull vs NumPy")
    return f"; SGD + group pull equals NumPy with the whole-tree group means {np.round(means, 4).tolist()}"


def mixture_reference(runner: Runner) -> str:
    """The initial means span the weights' range over all shards."""
    means = np.asarray(runner.state0[0].means, np.float64)
    leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(runner.data[0])]
    low, high = min(x.min() for x in leaves), max(x.max() for x in leaves)
    expected = np.linspace(low, high, means.size - 1)
    assert np.allclose(means[1:], expected, rtol=1e-5, atol=1e-5), (
        f"initial means {means[1:]} do not span the whole-tree range [{low}, {high}]"
    )
    return f"; the initial mixture means span the whole-tree range [{low:.4g}, {high:.4g}]"


# ----------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    """One optreg transform, checked inside Adam (and plain SGD for the reference).

    Attributes:
      name: the row's name: the optreg factory, or ``factory[variant]``.
      transform: ``() -> optax.GradientTransformation``, the optreg part.
      after_step: chain it after the optimizer's learning rate (prox,
        projection) instead of before the optimizer (penalty gradients).
      api: the optreg name it needs (default ``name``); missing -> reported, not run.
      checks: which checks to run.
      reference: optional ``(runner) -> detail`` for ``per_shard_data``: compares
        one sharded SGD update (``runner.sgd_update()``) with NumPy, raising
        ``AssertionError`` on a mismatch.
    """

    name: str
    transform: Callable[[], optax.GradientTransformation]
    after_step: bool = False
    api: str = ""
    checks: tuple[str, ...] = CHECKS
    reference: Optional[Callable[[Runner], str]] = None

    def optimizer(self, base: optax.GradientTransformation) -> optax.GradientTransformation:
        if self.after_step:
            return optax.chain(base, self.transform())
        return optax.chain(self.transform(), base)


# ----------------------------------------------------------------------------- canaries: broken on purpose


def per_shard_projection(radius: float) -> optax.GradientTransformation:
    """WRONG on purpose: projects each device's shard of each leaf onto its own L2 ball.

    The checks must catch it (``per_shard_data``): the norm must be global.
    """
    mesh = make_mesh(AxisType.Auto)

    def project(update: jax.Array, weight: jax.Array) -> jax.Array:
        spec = fsdp_spec(weight.shape)

        def local(u: jax.Array, w: jax.Array) -> jax.Array:
            x = w + u
            return x * jnp.minimum(1.0, radius / jnp.sqrt(jnp.sum(x * x))) - w

        return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec), out_specs=spec)(update, weight)

    def update_fn(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        return jax.tree.map(project, updates, params), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def median_scaling() -> optax.GradientTransformation:
    """Gathers on purpose: divides the updates by the median |w| of the whole tree (a sort of everything).

    The checks must catch it (``no_gather``).
    """

    def update_fn(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        everything = jnp.concatenate([jnp.abs(w).ravel() for w in jax.tree.leaves(params)])
        median = jnp.sort(everything)[everything.size // 2]
        return jax.tree.map(lambda u: u / (1.0 + median), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


#: Canary cases: each must FAIL the one check it names (tests/test_sharding.py asserts that).
CANARIES = {"canary[per-shard norm]": "per_shard_data", "canary[sort of all weights]": "no_gather"}


def registry_cases(covered: set[str]) -> list[Case]:
    """A generic case (sharded run, single-device agreement, no gathers) for every transform in
    optreg's registry that the hand-written table below does not check already."""
    from optreg._registry import TRANSFORMS

    return [
        Case(entry.name, lambda entry=entry: entry.make(initial_params()), after_step=entry.placement == "last")
        for entry in TRANSFORMS
        if entry.name not in covered
    ]


def cases() -> list[Case]:
    """The hand-written table (with NumPy references), the registry's other transforms, then the canaries."""
    table = hand_written_cases()
    covered = {case.api or case.name for case in table}
    canaries = [case for case in table if case.name in CANARIES]
    return [case for case in table if case.name not in CANARIES] + registry_cases(covered) + canaries


def hand_written_cases() -> list[Case]:
    """Transforms with a NumPy reference for the sharded update, and the canaries."""
    return [
        Case("add_decayed_weights_q", lambda: optreg.add_decayed_weights_q(1e-2, q=1.5)),
        Case("add_elastic_net", lambda: optreg.add_elastic_net(1e-3, optax.linear_schedule(1e-2, 0.0, 10))),
        Case(
            "per_layer_decay",
            lambda: optreg.per_layer_decay({"Dense_0/kernel": 1e-2, "Dense_1/kernel": 1e-3}),
        ),
        Case(
            "soft_share_prior",
            lambda: optreg.soft_share_prior(1e-3, 17, mask=optreg.decay_mask),
            reference=mixture_reference,
        ),
        Case(
            "soft_share_prior[exact]",
            lambda: optreg.soft_share_prior(1e-3, 17, mode="exact", mask=optreg.decay_mask),
            api="soft_share_prior",
            checks=UPDATE_CHECKS,
            reference=mixture_reference,
        ),
        Case(
            "share_within_groups",
            lambda: optreg.share_within_groups(GROUP_STRENGTH, group_labels(initial_params())),
            reference=groups_reference,
        ),
        Case(
            "proximal_lq",
            lambda: optreg.proximal_lq(LEARNING_RATE, PROX_WEIGHT_DECAY, q=1.0),
            after_step=True,
            reference=prox_reference,
        ),
        Case(
            "project_lq_ball",
            lambda: optreg.project_lq_ball(per_shard_radius(2.0), q=2.0),
            after_step=True,
            reference=projection_reference(2.0, project_l2),
        ),
        Case(
            "project_lq_ball[q=1]",
            lambda: optreg.project_lq_ball(per_shard_radius(1.0), q=1.0),
            after_step=True,
            api="project_lq_ball",
            checks=UPDATE_CHECKS,
            reference=projection_reference(1.0, project_l1),
        ),
        Case(
            "project_lq_ball[q=3]",
            lambda: optreg.project_lq_ball(per_shard_radius(3.0), q=3.0),
            after_step=True,
            api="project_lq_ball",
            checks=UPDATE_CHECKS,
            reference=sphere_reference,
        ),
        Case(
            "canary[per-shard norm]",
            lambda: per_shard_projection(per_shard_radius(2.0)),
            after_step=True,
            api="__version__",
            checks=("per_shard_data",),
            reference=projection_reference(2.0, project_l2),
        ),
        Case("canary[sort of all weights]", median_scaling, api="__version__", checks=("no_gather",)),
    ]


# ----------------------------------------------------------------------------- helpers


def assert_trees_close(actual: Any, expected: Any, tolerance: tuple[float, float], what: str) -> None:
    """``|a − e| <= rtol·|e| + atol·max(1, max|e| over the whole tree)``; the message lists every differing leaf.

    The absolute part scales with the tree: a whole-tree reduction (a norm, a
    projection's threshold, a mixture statistic) rounds in another order when
    sharded, which moves every element by about eps·(the tree's scale), however
    small the element. A per-shard instead of global reduction is off by O(1).
    """
    rtol, atol = tolerance
    flat_a = jax.tree_util.tree_flatten_with_path(actual)[0]
    flat_e = [np.asarray(e, np.float64) for e in jax.tree.leaves(expected)]
    assert len(flat_a) == len(flat_e), f"{what}: {len(flat_a)} leaves vs {len(flat_e)}"
    scale = max([1.0] + [float(np.max(np.abs(e), initial=0.0)) for e in flat_e])
    bad = []
    for (path, a), e in zip(flat_a, flat_e):
        a = np.asarray(a, np.float64)
        excess = np.abs(a - e) / (rtol * np.abs(e) + atol * scale)
        if not np.all(excess <= 1):  # NaN fails too
            worst = int(np.nanargmax(excess)) if np.any(np.isfinite(excess)) else 0
            bad.append(
                f"{path_to_string(path)!r} (worst |diff|/tol = {np.nanmax(excess):.3g} at "
                f"{a.ravel()[worst]:.8g} vs {e.ravel()[worst]:.8g}; {int(np.sum(~(excess <= 1)))} of {a.size} elements)"
            )
    assert not bad, f"{what} differs (rtol={rtol}, atol={atol}·{scale:.3g}) at " + ", ".join(bad)


def sharding_mismatches(actual: Any, expected: Any) -> list[str]:
    """Leaves of ``actual`` whose sharding is not equivalent to the matching leaf of ``expected``."""
    out = []
    for (path, a), e in zip(jax.tree_util.tree_flatten_with_path(actual)[0], jax.tree.leaves(expected)):
        if not a.sharding.is_equivalent_to(e.sharding, a.ndim):
            out.append(f"{path_to_string(path)}: {a.sharding.spec} instead of {e.sharding.spec}")
    return out


def update_step(tx: optax.GradientTransformation) -> Callable:
    def step(params: Any, state: Any, grads: Any) -> tuple[Any, Any]:
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def init_state(tx: optax.GradientTransformation, params: Any, mesh: Optional[jax.sharding.Mesh]) -> Any:
    """``tx.init`` jitted; on a mesh its output shardings come from the same FSDP rule as the params'."""
    if mesh is None:
        return jax.jit(tx.init)(params)
    return jax.jit(tx.init, out_shardings=shardings_for(jax.eval_shape(tx.init, params), mesh))(params)


COLLECTIVE = re.compile(
    r"^\s*\S+ = (?P<type>.+?) (?P<op>all-gather|all-to-all|collective-permute|all-reduce|reduce-scatter)"
    r"(?:-start)?\(",
    re.MULTILINE,
)
SHAPE = re.compile(r"[a-z]+\d*\[([\d,]*)\]")


def _partial_results(op: str, elements: int, smallest: int, units: int = NUM_DEVICES) -> bool:
    """A collective that only combines per-device partial results or per-unit statistics, never
    parameter-sized data: an all-reduce smaller than the smallest sharded parameter, or an all-gather
    of at most one (scale, sum) pair per device or per unit (``units``: the longest side of a sharded
    kernel, e.g. a group lasso's or a per-unit ball's column norms)."""
    gatherable = max(2 * NUM_DEVICES, min(2 * units, smallest - 1))
    return (op == "all-reduce" and elements < smallest) or (op == "all-gather" and elements <= gatherable)


def _describe(found: list[tuple[str, int]]) -> str:
    ops = sorted({op for op, _ in found})
    return ", ".join(f"{op} of {sorted(n for o, n in found if o == op)} elements" for op in ops) or "none"


def collectives(hlo: str) -> list[tuple[str, int]]:
    """``(op, elements in its result)`` for every collective in compiled HLO text (tuples summed)."""
    found = []
    for match in COLLECTIVE.finditer(hlo):
        shapes = SHAPE.findall(match.group("type"))
        size = sum(int(np.prod([int(d) for d in dims.split(",") if d], dtype=np.int64)) for dims in shapes)
        found.append((match.group("op"), size))
    return found


def state_leaves_mirroring_params(state: Any, params: Any) -> list[tuple[str, Any, Any]]:
    """``(state path, state leaf, param leaf)`` for state leaves whose path ends with a param's path."""
    by_path = {path_to_string(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    pairs = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        name = path_to_string(path)
        for param_path, param in by_path.items():
            if name.endswith("/" + param_path) and leaf.shape == param.shape:
                pairs.append((name, leaf, param))
    return pairs


CONSTANT = re.compile(r"^\s*\S+ = (?P<type>\w+\[[\d,]*\])\S* constant\(", re.MULTILINE)


def large_constants(hlo: str, smallest: int) -> list[str]:
    """Array constants with at least ``smallest`` elements baked into compiled HLO (one copy per device)."""
    found = []
    for match in CONSTANT.finditer(hlo):
        dims = SHAPE.findall(match.group("type"))[0]
        if int(np.prod([int(d) for d in dims.split(",") if d], dtype=np.int64)) >= smallest:
            found.append(match.group("type"))
    return found


def memory(compiled: Any) -> tuple[int, int]:
    """Per-device bytes of a compiled step: (arguments + outputs, temporaries)."""
    stats = compiled.memory_analysis()
    return stats.argument_size_in_bytes + stats.output_size_in_bytes, stats.temp_size_in_bytes


# ----------------------------------------------------------------------------- the checks


class Runner:
    """Runs the checks of one case; the sharded Adam update is compiled once and shared."""

    def __init__(self, case: Case):
        self.case = case
        self.tx = case.optimizer(optax.adam(LEARNING_RATE, eps=ADAM_EPS))
        self.mesh = make_mesh(AxisType.Auto)
        self.step = jax.jit(update_step(self.tx))
        self.data = per_shard_data()
        params, grads = self.sharded(self.data[0]), self.sharded(self.data[1])
        self.state0 = init_state(self.tx, params, self.mesh)
        self.inputs = (params, self.state0, grads)
        self.compiled = self.step.lower(*self.inputs).compile()
        self.out1 = self.compiled(*self.inputs)
        try:
            self.out2 = self.compiled(*self.out1, grads)
        except ValueError:  # the first update moved a leaf to another sharding (keeps_sharding reports it)
            self.out2 = self.step(*self.out1, grads)

    def sharded(self, tree: Any) -> Any:
        return jax.device_put(tree, shardings_for(tree, self.mesh))

    @functools.cached_property
    def single(self) -> tuple[tuple[Any, Any, Any], Any]:
        """The single-device inputs and the update compiled for them."""
        params, grads = on_one_device(self.data[0]), on_one_device(self.data[1])
        inputs = (params, init_state(self.tx, params, None), grads)
        return inputs, self.step.lower(*inputs).compile()

    def sgd_update(self) -> Any:
        """The params after one sharded update of plain SGD with the transform, in float64."""
        tx = self.case.optimizer(optax.sgd(LEARNING_RATE))
        params, grads = self.sharded(self.data[0]), self.sharded(self.data[1])
        new_params, _ = jax.jit(update_step(tx))(params, init_state(tx, params, self.mesh), grads)
        return float64(new_params)

    def train_step(self) -> str:
        tx = self.tx

        def train(params: Any, state: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any, jax.Array]:
            def loss_fn(p: Any) -> jax.Array:
                return optax.softmax_cross_entropy_with_integer_labels(MODEL.apply(p, x), y).mean()

            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state, loss

        x, y = batch()
        results = []
        for mesh in (self.mesh, None):
            if mesh is not None:
                params = self.sharded(initial_params())
                state = init_state(tx, params, mesh)
                xs, ys = jax.device_put((x, y), NamedSharding(mesh, P(AXIS)))
                out = (shardings_for(params, mesh), shardings_for(state, mesh), NamedSharding(mesh, P()))
                step = jax.jit(train, out_shardings=out, donate_argnums=(0, 1))
            else:
                params = on_one_device(initial_params())
                state = init_state(tx, params, None)
                xs, ys = on_one_device((x, y))
                step = jax.jit(train, donate_argnums=(0, 1))
            losses = []
            for _ in range(2):
                params, state, loss = step(params, state, xs, ys)
                losses.append(float(loss))
            results.append((float64(params), float64(state), np.array(losses)))
        (p8, s8, l8), (p1, s1, l1) = results
        assert_trees_close(l8, l1, TRAIN_TOLERANCE, "losses")
        assert_trees_close(p8, p1, TRAIN_TOLERANCE, "params after 2 steps")
        assert_trees_close(s8, s1, TRAIN_TOLERANCE, "optimizer state after 2 steps")
        return f"2 steps, losses {np.round(l8, 5).tolist()} (8 devices) vs {np.round(l1, 5).tolist()} (1 device)"

    def keeps_sharding(self) -> str:
        params, state, _ = self.inputs
        bad = []
        for label, (new_params, new_state) in (("update 1", self.out1), ("update 2", self.out2)):
            moved = sharding_mismatches(new_params, params) + sharding_mismatches(new_state, state)
            bad += [f"{label}: {entry}" for entry in moved]
        assert not bad, f"leaves changed sharding: {bad}"
        return f"{len(jax.tree.leaves(self.out1))} params+state leaves keep their sharding (jit, no out_shardings)"

    def state_sharded(self) -> str:
        params = self.inputs[0]
        details = []
        for label, state in (("init", self.state0), ("after 2 updates", self.out2[1])):
            pairs = state_leaves_mirroring_params(state, params)
            bad = []
            for name, leaf, param in pairs:
                mine, theirs = leaf.addressable_shards[0].data.shape, param.addressable_shards[0].data.shape
                if not leaf.sharding.is_equivalent_to(param.sharding, leaf.ndim) or mine != theirs:
                    bad.append(f"{name}: {leaf.sharding.spec} shard {mine}, param {param.sharding.spec} shard {theirs}")
            smallest = min(leaf.size for leaf in jax.tree.leaves(params) if AXIS in fsdp_spec(leaf.shape))
            for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
                # a replicated leaf smaller than any sharded parameter is mixture- or unit-sized; soft
                # sharing's table (4 x (G + 1), G the grid's points) is sized by the grid, not by the params
                grid_sized = path_to_string(path).endswith("cache/table")
                if leaf.size >= max(MIN_SHARDED_SIZE, smallest) and leaf.sharding.is_fully_replicated \
                        and not grid_sized:
                    bad.append(f"{path_to_string(path)}: {leaf.shape} replicated on every device")
            assert not bad, f"{label}: {bad}"
            details.append(f"{label}: {len(pairs)} state leaves mirror params")
        leaves = jax.tree.leaves(self.out2[1])
        per_device = sum(leaf.addressable_shards[0].data.nbytes for leaf in leaves)
        total = sum(leaf.nbytes for leaf in leaves)
        return "; ".join(details) + f"; state bytes per device {per_device} of {total}"

    def no_gather(self) -> str:
        sharded = [leaf for leaf in jax.tree.leaves(self.data[0]) if AXIS in fsdp_spec(leaf.shape)]
        smallest = min(leaf.size for leaf in sharded)
        units = max(max(leaf.shape) for leaf in sharded)
        hlo = self.compiled.as_text()
        found = collectives(hlo)
        bad = [f"{op} of {n} elements" for op, n in found if not _partial_results(op, n, smallest, units)]
        bad += [f"constant {c} (full size on every device)" for c in large_constants(hlo, smallest)]
        assert not bad, f"the sharded update moves or copies parameter-sized data: {bad}"
        (io, temp), (io_single, temp_single) = memory(self.compiled), memory(self.single[1])
        assert io < 0.25 * io_single, (
            f"per-device arguments + outputs of the sharded update: {io} bytes, {io / io_single:.2f} of the "
            f"single-device update's {io_single} (expected about 1/{NUM_DEVICES})"
        )
        return (
            f"collectives: {_describe(found)} and nothing else; per device: "
            f"arguments+outputs {io} vs {io_single} bytes on one device ({io / io_single:.3f}), "
            f"temporaries {temp} vs {temp_single}"
        )

    def per_shard_data(self) -> str:
        detail = self.case.reference(self) if self.case.reference is not None else ""
        (params, state, grads), compiled = self.single
        first = compiled(params, state, grads)
        second = compiled(*first, grads)
        for label, mine, theirs in (("update 1", self.out1, first), ("update 2", self.out2, second)):
            assert_trees_close(float64(mine[0]), float64(theirs[0]), UPDATE_TOLERANCE, f"params after {label}")
            assert_trees_close(float64(mine[1]), float64(theirs[1]), UPDATE_TOLERANCE, f"state after {label}")
        return "2 Adam updates on per-shard-scaled data equal the single-device ones" + detail

    def explicit_mesh(self) -> str:
        mesh = make_mesh(AxisType.Explicit)
        params, grads = self.data
        with jax.set_mesh(mesh):
            p = jax.device_put(params, shardings_for(params, mesh))
            g = jax.device_put(grads, shardings_for(grads, mesh))
            state = init_state(self.tx, p, mesh)
            out = jax.jit(update_step(self.tx))(p, state, g)
            bad = sharding_mismatches(out[0], p) + sharding_mismatches(out[1], state)
            assert not bad, f"leaves changed sharding: {bad}"
            result = float64(out)
        assert_trees_close(result[0], float64(self.out1[0]), UPDATE_TOLERANCE, "params after the explicit-mesh update")
        assert_trees_close(result[1], float64(self.out1[1]), UPDATE_TOLERANCE, "state after the explicit-mesh update")
        return "traces under AxisType.Explicit, keeps shardings, same result"

    def tree_map_params(self) -> str:
        params, state = self.inputs[0], self.state0
        derived = optax.tree_utils.tree_map_params(
            self.tx,
            lambda _, sharding: sharding,
            state,
            shardings_for(params, self.mesh),
            transform_non_params=lambda _: NamedSharding(self.mesh, P()),
        )
        flat = jax.tree.leaves(derived, is_leaf=lambda x: isinstance(x, NamedSharding))
        assert len(flat) == len(jax.tree.leaves(state)), "tree_map_params changed the state's structure"
        bad = [
            f"{name}: {sharding.spec} vs {leaf.sharding.spec}"
            for (name, leaf, _), sharding in zip(
                [(path_to_string(p), leaf, None) for p, leaf in jax.tree_util.tree_flatten_with_path(state)[0]], flat
            )
            if not sharding.is_equivalent_to(leaf.sharding, leaf.ndim)
        ]
        assert not bad, f"tree_map_params gives other shardings than the FSDP rule: {bad}"
        return f"optax.tree_utils.tree_map_params derives all {len(flat)} state shardings"


def run_case(case: Case) -> dict[str, dict[str, Any]]:
    """Every check of ``case``; a failure is recorded with its traceback, never raised."""
    start = time.process_time()
    try:
        runner = Runner(case)
    except Exception as error:  # noqa: BLE001 - reported per check
        message = f"setup failed: {type(error).__name__}: {error}\n{traceback.format_exc(limit=-6)}"
        return {check: {"ok": False, "detail": message, "seconds": 0.0} for check in case.checks}
    report = {"setup": {"ok": True, "detail": "", "seconds": round(time.process_time() - start, 2)}}
    for check in case.checks:
        start = time.process_time()
        try:
            report[check] = {"ok": True, "detail": getattr(runner, check)()}
        except Exception as error:  # noqa: BLE001 - reported, the next check still runs
            detail = f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=-4)}"
            report[check] = {"ok": False, "detail": detail}
        report[check]["seconds"] = round(time.process_time() - start, 2)
    return report


def main(names: list[str]) -> None:
    if jax.device_count() != NUM_DEVICES:
        raise SystemExit(
            f"expected {NUM_DEVICES} devices, got {jax.devices()}: set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={NUM_DEVICES} before JAX starts"
        )
    table = {case.name: case for case in cases()}
    results: dict[str, Any] = {}
    for name in names or list(table):
        results[name] = run_case(table[name])
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])
