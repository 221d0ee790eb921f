"""Weight-decay variant rows: cautious, anchored and learning-rate-independent decay against optax's decay,
and the orthogonal and spectral penalties against Adam alone on a dense MLP.

Each optreg chain sits next to what a user writes without optreg:

* cautious decay (Chen et al. 2025) goes where decoupled decay goes, so its
  baseline is optax's AdamW chain ``scale_by_adam, add_decayed_weights,
  scale_by_learning_rate``;
* anchored decay (L2-SP) and independent decay against ``add_decayed_weights``
  before Adam (the same arithmetic; the anchor is one more parameter-sized
  read, twice per step before Adam, whose two moment loops each recompute the
  decayed gradient, once in AdamW's place);
* orthogonal and spectral decay against Adam: their cost is matrix products
  (4·n·m·min(n, m) flops per kernel) and two matrix-vector products per
  kernel, so the ratio reports what they add to a step.
"""

from __future__ import annotations

import math
from typing import Callable

import bench_steps as steps
import optax
from bench_cases import LEARNING_RATE, WEIGHT_DECAY, optreg_api
from bench_harness import Case, Step

#: The target for cautious, anchored and independent decay + Adam vs optax's decay + Adam.
TARGET = 1.10
TARGET_SOURCE = "required: <= 1.10x optax add_decayed_weights + Adam"


def mlp_shapes(n: int, layers: int = 4) -> dict:
    """A square dense MLP with ``layers`` kernels of width sqrt(n / layers) (1024 for 4M parameters), plus biases."""
    width = max(2, int(math.sqrt(n / layers)))
    return {"params": {f"Dense_{i}": {"kernel": (width, width), "bias": (width,)} for i in range(layers)}}


def _adam() -> optax.GradientTransformation:
    return optax.adam(LEARNING_RATE)


def _decoupled(middle: optax.GradientTransformation) -> optax.GradientTransformation:
    return optax.chain(optax.scale_by_adam(), middle, optax.scale_by_learning_rate(LEARNING_RATE))


def variant_cases(n: int, group: str = "decay variants", seed: int = 0) -> list[Case]:
    """Cautious, anchored and independent decay + Adam vs optax's ``add_decayed_weights`` + Adam on ~``n`` params."""
    shapes = steps.dense_shapes(n)
    tree = steps.lazy_params_and_grads(shapes, seed)

    def build(make_tx: Callable[[], optax.GradientTransformation]) -> Callable[[], Step]:
        return lambda: steps.train_step(make_tx(), *tree())

    def anchored(from_init: bool) -> optax.GradientTransformation:
        anchor = "init" if from_init else tree()[0]
        return optax.chain(optreg_api("decay_towards")(anchor, WEIGHT_DECAY), _adam())

    coupled = "optax.add_decayed_weights + adam"
    decoupled = "optax scale_by_adam + add_decayed_weights + lr (AdamW)"
    common = dict(group=group, n_params=steps.count_params(shapes), floor="floor (p+g), variants")
    target = dict(target=TARGET, target_source=TARGET_SOURCE)
    return [
        Case("floor (p+g), variants", build=lambda: steps.floor_step(*tree()), **common,
             note="jitted p + g over the same bytes: the memory-bound floor"),
        Case("adam, variants", build=build(_adam), **common),
        Case(coupled, baseline="adam, variants", **common,
             build=build(lambda: optax.chain(optax.add_decayed_weights(WEIGHT_DECAY), _adam()))),
        Case(decoupled, baseline="adam, variants", **common,
             build=build(lambda: _decoupled(optax.add_decayed_weights(WEIGHT_DECAY)))),
        Case("scale_by_adam + add_cautious_weight_decay + lr", baseline=decoupled, **common, **target,
             build=build(lambda: _decoupled(optreg_api("add_cautious_weight_decay")(WEIGHT_DECAY)))),
        Case("decay_towards('init') + adam", baseline=coupled, **common, **target,
             build=build(lambda: anchored(True)), note="reads the anchor: one more parameter-sized array"),
        Case("decay_towards(pytree) + adam", baseline=coupled, **common, **target,
             build=build(lambda: anchored(False))),
        Case("scale_by_adam + decay_towards('init') + lr", baseline=decoupled, **common,
             build=build(lambda: _decoupled(optreg_api("decay_towards")("init", WEIGHT_DECAY))),
             note="L2-SP placed like AdamW's decay: the anchor is read once, in the last loop"),
        Case("adam + independent_weight_decay", baseline=coupled, **common, **target,
             build=build(lambda: optax.chain(_adam(), optreg_api("independent_weight_decay")(WEIGHT_DECAY)))),
    ]


def matrix_cases(n: int, group: str = "orthogonal and spectral decay", seed: int = 0) -> list[Case]:
    """Orthogonal and spectral decay + Adam vs Adam on a ~``n``-parameter square MLP (4 layers)."""
    shapes = mlp_shapes(n)
    tree = steps.lazy_params_and_grads(shapes, seed)
    width = shapes["params"]["Dense_0"]["kernel"][0]

    def build(make_tx: Callable[[], optax.GradientTransformation]) -> Callable[[], Step]:
        return lambda: steps.train_step(make_tx(), *tree())

    def chained(name: str, **options: object) -> Callable[[], optax.GradientTransformation]:
        return lambda: optax.chain(optreg_api(name)(WEIGHT_DECAY, **options), _adam())

    common = dict(group=group, n_params=steps.count_params(shapes), floor="floor (p+g), MLP",
                  note=f"4 dense layers {width} x {width}")
    return [
        Case("floor (p+g), MLP", build=lambda: steps.floor_step(*tree()), **common),
        Case("adam, MLP", build=build(_adam), **common),
        Case("optax.add_decayed_weights + adam, MLP", baseline="adam, MLP", **common,
             build=build(lambda: optax.chain(optax.add_decayed_weights(WEIGHT_DECAY), _adam()))),
        Case("add_orthogonal_decay + adam", baseline="adam, MLP", build=build(chained("add_orthogonal_decay")),
             **common),
        Case("add_spectral_decay + adam", baseline="adam, MLP", build=build(chained("add_spectral_decay")),
             **common),
        Case("add_spectral_decay(num_iterations=4) + adam", baseline="adam, MLP",
             build=build(chained("add_spectral_decay", num_iterations=4)), **common),
    ]
