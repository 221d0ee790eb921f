"""optreg: regularization as composable, jit-compiled Optax gradient transformations.

One penalty convention throughout: Ω(w) = (λ/q)·Σ|w|^q, and every transform
adds exactly ∂Ω/∂w to the updates. Transforms and penalties live here; proximal
operators in :mod:`optreg.prox` (as ``jaxopt.prox``) and projections in
:mod:`optreg.projections` (as ``optax.projections``).
"""

from optreg import projections, prox
from optreg._anchored import AnchorState, decay_towards, decay_towards_penalty
from optreg._cautious import add_cautious_weight_decay
from optreg._compression import LayerDiagnostics, Quantized, SnapWarning, quantize
from optreg._decay import add_decayed_weights_q, lq_gradient, lq_penalty
from optreg._deprecated import forwarder
from optreg._elastic_net import add_elastic_net, elastic_net_penalty
from optreg._group_lasso import group_lasso_penalty, proximal_group_lasso
from optreg._groups import GroupState, group_share_penalty, share_within_groups
from optreg._hyper import CountState
from optreg._independent import independent_weight_decay
from optreg._masks import decay_mask
from optreg._mixture import (
    MixtureParams,
    MixturePrior,
    MixtureState,
    mixing_proportions,
    mixture_density,
    responsibilities,
)
from optreg._orthogonal import add_orthogonal_decay, orthogonal_penalty
from optreg._per_layer import PerLayerDecay, describe, per_layer_decay, per_layer_penalty
from optreg._project import project, project_lq_ball
from optreg._proximal import (
    LearningRateAndProxState,
    proximal_elastic_net,
    proximal_lq,
    scale_by_learning_rate_and_prox,
)
from optreg._soft_share import soft_share_penalty, soft_share_prior
from optreg._soft_share_compress import CompressionWarning, SoftShareCompressed, soft_share_compress
from optreg._spectral import SpectralState, add_spectral_decay, spectral_penalty
from optreg._storage import CompressionReport, LayerReport, compression_report

__version__ = "0.2.0"

#: Operators that lived at the top level in 0.1; they are in their namespaces now (as jaxopt's and optax's).
__getattr__ = forwarder("optreg", {
    "prox_lq": "optreg.prox.prox_lq",
    "tree_prox_lq": "optreg.prox.tree_prox_lq",
    "prox_elastic_net": "optreg.prox.prox_elastic_net",
    "prox_group_lasso": "optreg.prox.prox_group_lasso",
    "projection_lq_ball": "optreg.projections.projection_lq_ball",
})

__all__ = [
    "AnchorState",
    "CompressionReport",
    "CompressionWarning",
    "CountState",
    "GroupState",
    "LayerDiagnostics",
    "LayerReport",
    "LearningRateAndProxState",
    "MixtureParams",
    "MixturePrior",
    "MixtureState",
    "PerLayerDecay",
    "Quantized",
    "SnapWarning",
    "SoftShareCompressed",
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
    "group_lasso_penalty",
    "group_share_penalty",
    "independent_weight_decay",
    "lq_gradient",
    "lq_penalty",
    "mixing_proportions",
    "mixture_density",
    "orthogonal_penalty",
    "per_layer_decay",
    "per_layer_penalty",
    "project",
    "project_lq_ball",
    "projections",
    "prox",
    "proximal_elastic_net",
    "proximal_group_lasso",
    "proximal_lq",
    "quantize",
    "responsibilities",
    "scale_by_learning_rate_and_prox",
    "share_within_groups",
    "soft_share_compress",
    "soft_share_penalty",
    "soft_share_prior",
    "spectral_penalty",
]
