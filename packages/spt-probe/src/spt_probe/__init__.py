"""spt-probe: an online linear or MLP probe trained on detached features.

:class:`OnlineProbe` is the callback; :mod:`spt_probe.functional` holds what it runs on each
batch (:func:`probe_step`, :func:`probe_predict`, :func:`probe_loss`, the default loss
:func:`masked_cross_entropy`) as functions a probe trained by hand can call;
:mod:`spt_probe.linear_eval` the clean evaluation's :func:`fresh_probe` and :func:`fit_probe`.
"""

from spt_probe.__about__ import __version__
from spt_probe.functional import (
    ProbeStep,
    masked_cross_entropy,
    probe_loss,
    probe_predict,
    probe_step,
)
from spt_probe.linear_eval import fit_probe, fresh_probe
from spt_probe.online_probe import OnlineProbe

__all__ = [
    "OnlineProbe",
    "ProbeStep",
    "__version__",
    "fit_probe",
    "fresh_probe",
    "masked_cross_entropy",
    "probe_loss",
    "probe_predict",
    "probe_step",
]
