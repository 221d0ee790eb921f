"""optreg: regularization as composable, jit-compiled Optax gradient transformations.

One penalty convention throughout: Ω(w) = (λ/q)·Σ|w|^q, and every transform
adds exactly ∂Ω/∂w to the updates. See ``README.md`` for the conversion table.
"""

from optreg._hyper import CountState
from optreg.decay import add_decayed_weights_q, lq_gradient, lq_penalty
from optreg.elastic_net import add_elastic_net, elastic_net_penalty
from optreg.masks import decay_mask
from optreg.per_layer import PerLayerDecay, describe, per_layer_decay, per_layer_penalty

__version__ = "0.1.0"

__all__ = [
    "CountState",
    "PerLayerDecay",
    "__version__",
    "add_decayed_weights_q",
    "add_elastic_net",
    "decay_mask",
    "describe",
    "elastic_net_penalty",
    "lq_gradient",
    "lq_penalty",
    "per_layer_decay",
    "per_layer_penalty",
]
