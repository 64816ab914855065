"""spt-probe: an online linear or MLP probe trained on detached features."""

from spt_probe.__about__ import __version__
from spt_probe.functional import masked_cross_entropy
from spt_probe.online_probe import OnlineProbe

__all__ = ["OnlineProbe", "__version__", "masked_cross_entropy"]
