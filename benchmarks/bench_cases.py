"""The timed cases: each an optreg chain next to what a user would write without optreg.

Every builder looks up the optreg API it needs only when it is built, so a
transform that does not exist (yet) shows up as "skipped (not available)".
"""

from __future__ import annotations

import re
from typing import Any, Callable

import bench_steps as steps
import jax
import optax
from bench_harness import Case, Step, Unavailable

LEARNING_RATE = 1e-3
WEIGHT_DECAY = 1e-4


def optreg_api(name: str) -> Any:
    """``optreg.<name>``, or :class:`Unavailable` if this checkout does not have it."""
    import optreg

    if not hasattr(optreg, name):
        raise Unavailable(f"optreg.{name} does not exist in this checkout")
    return getattr(optreg, name)


# ----------------------------------------------------------------------------- Lq decay, prox, projection


def optimizer_cases(n: int, group: str = "decay and prox", seed: int = 0) -> list[Case]:
    """Lq decay, prox, group-lasso and projection rows on one ~``n``-parameter dense tree."""
    shapes = steps.dense_shapes(n)
    size = steps.count_params(shapes)

    tree = steps.lazy_params_and_grads(shapes, seed)

    def chain_case(make_tx: Callable[[], optax.GradientTransformation]) -> Callable[[], Step]:
        return lambda: steps.train_step(make_tx(), *tree())

    def adam() -> optax.GradientTransformation:
        return optax.adam(LEARNING_RATE)

    def q_decay(q: float) -> Callable[[], optax.GradientTransformation]:
        return lambda: optax.chain(optreg_api("add_decayed_weights_q")(WEIGHT_DECAY, q), adam())

    def prox(q: float) -> Callable[[], optax.GradientTransformation]:
        return lambda: optax.chain(adam(), optreg_api("proximal_lq")(LEARNING_RATE, WEIGHT_DECAY, q))

    def radius() -> float:
        params, _ = tree()
        return 0.9 * float(optax.tree.norm(params))

    def project_l2() -> optax.GradientTransformation:
        return optax.chain(adam(), optreg_api("project_lq_ball")(radius(), 2.0))

    def unit_radius() -> float:
        """0.9 of the mean column norm of the first kernel: most units' balls are active."""
        params, _ = tree()
        kernel = params["params"]["Dense_0"]["kernel"]
        return 0.9 * float(jax.numpy.mean(jax.numpy.linalg.norm(kernel, axis=0)))

    def project_per_unit() -> optax.GradientTransformation:
        ball = optreg_api("project_lq_ball")(unit_radius(), 2.0, axis=0, mask=optreg_api("decay_mask"))
        return optax.chain(adam(), ball)

    def group_lasso() -> optax.GradientTransformation:
        prox = optreg_api("proximal_group_lasso")(LEARNING_RATE, WEIGHT_DECAY, axis=0, mask=optreg_api("decay_mask"))
        return optax.chain(adam(), prox)

    def optax_projection_step() -> Step:
        r = radius()
        return steps.train_step(adam(), *tree(), after=lambda p: optax.projections.projection_l2_ball(p, r))

    common = dict(group=group, n_params=size, floor="floor (p+g)")
    cases = [
        Case("floor (p+g)", build=lambda: steps.floor_step(*tree()), **common,
             note="jitted p + g over the same bytes: the memory-bound floor"),
        Case("adam", build=chain_case(adam), **common),
        Case("optax.add_decayed_weights + adam", baseline="adam",
             build=chain_case(lambda: optax.chain(optax.add_decayed_weights(WEIGHT_DECAY), adam())), **common),
    ]
    targets = {2.0: 1.05, 1.0: 1.10, 1.5: 1.15, 0.5: None}
    for q, target in targets.items():
        cases.append(Case(
            f"add_decayed_weights_q(q={q:g}) + adam", baseline="optax.add_decayed_weights + adam",
            target=target, build=chain_case(q_decay(q)), **common))
    for q, target in ((1.0, 1.10), (0.5, 1.3)):
        cases.append(Case(
            f"adam + proximal_lq(q={q:g})", baseline="adam", target=target, build=chain_case(prox(q)), **common))
    by_hand = "adam + optax projection_l2_ball (by hand)"
    cases.append(Case("adam + project_lq_ball(q=2)", baseline=by_hand, target=1.05, build=chain_case(project_l2),
                      note="the whole-tree L2 ball against the same projection written by hand", **common))
    cases.append(Case(by_hand, baseline="adam", build=optax_projection_step,
                      note="what a user writes without optreg: project after apply_updates", **common))
    cases.append(Case("adam + proximal_group_lasso(axis=0)", baseline="adam", target=1.3,
                      build=chain_case(group_lasso), note="one group per unit of each kernel", **common))
    cases.append(Case("adam + project_lq_ball(q=2, axis=0)", baseline="adam", target=1.3,
                      build=chain_case(project_per_unit), note="one L2 ball per unit (max-norm)", **common))
    return cases


# ----------------------------------------------------------------------------- per-layer decay

PER_LAYER_RULES = {r"attention/": 1e-4, r"mlp/": 3e-4, r"Embed_0/": 1e-5}


def _path(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _decayable(path: str, leaf: Any) -> bool:
    return leaf.ndim >= 2 and path.rsplit("/", 1)[-1] not in ("bias", "scale")


def per_layer_labels(params: Any) -> Any:
    """The label tree a user would write for ``optax.multi_transform`` to mimic PER_LAYER_RULES."""

    def label(path: tuple, leaf: Any) -> str:
        text = _path(path)
        if _decayable(text, leaf):
            for index, pattern in enumerate(PER_LAYER_RULES):
                if re.search(pattern, text):
                    return f"rule_{index}"
        return "none"

    return jax.tree_util.tree_map_with_path(label, params)


def per_layer_cases(
    blocks: int = 6, dims: tuple[int, int, int] = (256, 1024, 2048), group: str = "per-layer decay", seed: int = 0
) -> list[Case]:
    """``per_layer_decay`` on a ~100-leaf transformer-like tree vs optax ``multi_transform`` / ``masked``."""
    d_model, d_mlp, vocab = dims
    shapes = steps.transformer_shapes(blocks, d_model, d_mlp, vocab)
    size = steps.count_params(shapes)
    leaves = len(jax.tree.leaves(shapes, is_leaf=steps._is_shape))

    tree = steps.lazy_params_and_grads(shapes, seed)

    def adam() -> optax.GradientTransformation:
        return optax.adam(LEARNING_RATE)

    def multi() -> optax.GradientTransformation:
        transforms: dict[str, optax.GradientTransformation] = {
            f"rule_{i}": optax.add_decayed_weights(lam) for i, lam in enumerate(PER_LAYER_RULES.values())
        }
        transforms["none"] = optax.identity()
        return optax.chain(optax.multi_transform(transforms, per_layer_labels), adam())

    def masked() -> optax.GradientTransformation:
        parts = []
        for i, lam in enumerate(PER_LAYER_RULES.values()):
            parts.append(optax.masked(
                optax.add_decayed_weights(lam),
                lambda p, i=i: jax.tree.map(lambda label: label == f"rule_{i}", per_layer_labels(p))))
        return optax.chain(*parts, adam())

    def optreg_chain() -> optax.GradientTransformation:
        return optax.chain(optreg_api("per_layer_decay")(PER_LAYER_RULES), adam())

    def build(make_tx: Callable[[], optax.GradientTransformation]) -> Callable[[], Step]:
        return lambda: steps.train_step(make_tx(), *tree())

    note = f"{leaves} leaves, rules {PER_LAYER_RULES}, kernels only"
    common = dict(group=group, n_params=size, floor="floor (p+g), per-layer tree", note=note)
    multi_name = "optax.multi_transform(add_decayed_weights) + adam"
    return [
        Case("floor (p+g), per-layer tree", build=lambda: steps.floor_step(*tree()), **common),
        Case("adam, per-layer tree", build=build(adam), **common),
        Case(multi_name, baseline="adam, per-layer tree",
             build=build(multi), **common),
        Case("optax.masked(add_decayed_weights) x3 + adam", baseline=multi_name,
             build=build(masked), **common),
        Case("per_layer_decay + adam", baseline=multi_name,
             build=build(optreg_chain), **common),
    ]
