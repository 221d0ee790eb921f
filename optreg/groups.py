"""Deprecated module: its names moved in optreg 0.2 (see the warning each one gives)."""

from optreg._deprecated import forwarder

__getattr__ = forwarder("optreg.groups", {
    "share_within_groups": "optreg.share_within_groups",
    "group_share_penalty": "optreg.group_share_penalty",
    "GroupState": "optreg.GroupState",
})
