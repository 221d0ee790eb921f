"""Deprecated module: its names moved in optreg 0.2 (see the warning each one gives)."""

from optreg._deprecated import forwarder

__getattr__ = forwarder("optreg.soft_share", {
    "soft_share_prior": "optreg.soft_share_prior",
    "soft_share_penalty": "optreg.soft_share_penalty",
    "MixtureState": "optreg.MixtureState",
    "mixing_proportions": "optreg.mixing_proportions",
    "mixture_density": "optreg.mixture_density",
    "responsibilities": "optreg.responsibilities",
})
