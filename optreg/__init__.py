"""optreg: regularization as composable, jit-compiled Optax gradient transformations.

One penalty convention throughout: Ω(w) = (λ/q)·Σ|w|^q, and every transform
adds exactly ∂Ω/∂w to the updates. See ``README.md`` for the conversion table.
"""

from optreg._compression import LayerDiagnostics, Quantized, SnapWarning, quantize
from optreg._hyper import CountState
from optreg._mixture import (
    MixtureParams,
    MixturePrior,
    MixtureState,
    mixing_proportions,
    mixture_density,
    responsibilities,
)
from optreg._soft_share import soft_share_penalty, soft_share_prior
from optreg._soft_share_compress import SoftShareCompressed, soft_share_compress
from optreg._storage import CompressionReport, LayerReport, compression_report
from optreg.decay import add_decayed_weights_q, lq_gradient, lq_penalty
from optreg.elastic_net import add_elastic_net, elastic_net_penalty
from optreg.groups import GroupState, group_share_penalty, share_within_groups
from optreg.masks import decay_mask
from optreg.per_layer import PerLayerDecay, describe, per_layer_decay, per_layer_penalty
from optreg.projection import project_lq_ball, projection_lq_ball
from optreg.prox import prox_elastic_net, prox_group_lasso, prox_lq, tree_prox_lq
from optreg.proximal import proximal_elastic_net, proximal_lq

__version__ = "0.1.0"

__all__ = [
    "CompressionReport",
    "CountState",
    "GroupState",
    "LayerDiagnostics",
    "LayerReport",
    "MixtureParams",
    "MixturePrior",
    "MixtureState",
    "PerLayerDecay",
    "Quantized",
    "SnapWarning",
    "SoftShareCompressed",
    "__version__",
    "add_decayed_weights_q",
    "add_elastic_net",
    "compression_report",
    "decay_mask",
    "describe",
    "elastic_net_penalty",
    "group_share_penalty",
    "lq_gradient",
    "lq_penalty",
    "mixing_proportions",
    "mixture_density",
    "per_layer_decay",
    "per_layer_penalty",
    "project_lq_ball",
    "projection_lq_ball",
    "prox_elastic_net",
    "prox_group_lasso",
    "prox_lq",
    "proximal_elastic_net",
    "proximal_lq",
    "quantize",
    "responsibilities",
    "share_within_groups",
    "soft_share_compress",
    "soft_share_penalty",
    "soft_share_prior",
    "tree_prox_lq",
]
