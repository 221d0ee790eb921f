"""optreg: regularization as composable, jit-compiled Optax gradient transformations.

One penalty convention throughout: Ω(w) = (λ/q)·Σ|w|^q, and every transform
adds exactly ∂Ω/∂w to the updates. See ``README.md`` for the conversion table.
"""

from optreg import projections, prox
from optreg._group_lasso import group_lasso_penalty, proximal_group_lasso
from optreg._hyper import CountState
from optreg._project import project, project_lq_ball
from optreg._proximal import (
    LearningRateAndProxState,
    proximal_elastic_net,
    proximal_lq,
    scale_by_learning_rate_and_prox,
)
from optreg.compression import CompressionReport, Quantized, compression_report, quantize
from optreg.decay import add_decayed_weights_q, lq_gradient, lq_penalty
from optreg.elastic_net import add_elastic_net, elastic_net_penalty
from optreg.groups import GroupState, group_share_penalty, share_within_groups
from optreg.masks import decay_mask
from optreg.per_layer import PerLayerDecay, describe, per_layer_decay, per_layer_penalty
from optreg.projections import projection_lq_ball  # old top-level operator name, kept importable for now
from optreg.prox import prox_elastic_net, prox_group_lasso, prox_lq, tree_prox_lq  # old top-level operator names
from optreg.soft_share import (
    MixtureState,
    mixing_proportions,
    mixture_density,
    responsibilities,
    soft_share_penalty,
    soft_share_prior,
)

__version__ = "0.1.0"

__all__ = [
    "CompressionReport",
    "CountState",
    "GroupState",
    "LearningRateAndProxState",
    "MixtureState",
    "PerLayerDecay",
    "Quantized",
    "__version__",
    "add_decayed_weights_q",
    "add_elastic_net",
    "compression_report",
    "decay_mask",
    "describe",
    "elastic_net_penalty",
    "group_lasso_penalty",
    "group_share_penalty",
    "lq_gradient",
    "lq_penalty",
    "mixing_proportions",
    "mixture_density",
    "per_layer_decay",
    "per_layer_penalty",
    "project",
    "project_lq_ball",
    "projection_lq_ball",
    "prox_elastic_net",
    "prox_group_lasso",
    "prox_lq",
    "projections",
    "prox",
    "proximal_elastic_net",
    "proximal_group_lasso",
    "proximal_lq",
    "quantize",
    "responsibilities",
    "scale_by_learning_rate_and_prox",
    "share_within_groups",
    "soft_share_penalty",
    "soft_share_prior",
    "tree_prox_lq",
]
