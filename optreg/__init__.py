"""optreg: regularization as composable, jit-compiled Optax gradient transformations.

One penalty convention throughout: Ω(w) = (λ/q)·Σ|w|^q, and every transform
adds exactly ∂Ω/∂w to the updates. See ``README.md`` for the conversion table.
"""

from optreg._anchored import AnchorState, decay_towards, decay_towards_penalty
from optreg._cautious import add_cautious_weight_decay
from optreg._decay import add_decayed_weights_q, lq_gradient, lq_penalty
from optreg._elastic_net import add_elastic_net, elastic_net_penalty
from optreg._groups import GroupState, group_share_penalty, share_within_groups
from optreg._hyper import CountState
from optreg._independent import independent_weight_decay
from optreg._masks import decay_mask
from optreg._orthogonal import add_orthogonal_decay, orthogonal_penalty
from optreg._per_layer import PerLayerDecay, describe, per_layer_decay, per_layer_penalty
from optreg._spectral import SpectralState, add_spectral_decay, spectral_penalty
from optreg.compression import CompressionReport, Quantized, compression_report, quantize
from optreg.projection import project_lq_ball, projection_lq_ball
from optreg.prox import prox_elastic_net, prox_group_lasso, prox_lq, tree_prox_lq
from optreg.proximal import proximal_elastic_net, proximal_lq
from optreg.soft_share import (
    MixtureState,
    mixing_proportions,
    mixture_density,
    responsibilities,
    soft_share_penalty,
    soft_share_prior,
)

__version__ = "0.2.0"

__all__ = [
    "AnchorState",
    "CompressionReport",
    "CountState",
    "GroupState",
    "MixtureState",
    "PerLayerDecay",
    "Quantized",
    "SpectralState",
    "__version__",
    "add_cautious_weight_decay",
    "add_decayed_weights_q",
    "add_elastic_net",
    "add_orthogonal_decay",
    "add_spectral_decay",
    "compression_report",
    "decay_mask",
    "decay_towards",
    "decay_towards_penalty",
    "describe",
    "elastic_net_penalty",
    "group_share_penalty",
    "independent_weight_decay",
    "lq_gradient",
    "lq_penalty",
    "mixing_proportions",
    "mixture_density",
    "orthogonal_penalty",
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
    "soft_share_penalty",
    "soft_share_prior",
    "spectral_penalty",
    "tree_prox_lq",
]
