"""spt-core: the shared base of the spt callbacks."""

from spt_core import checks, distributed
from spt_core.__about__ import __version__
from spt_core.callback import (
    SPTCallback,
    callbacks_metrics,
    callbacks_modules,
)
from spt_core.checks import DataChecks
from spt_core.keys import lookup
from spt_core.metrics import StageMetrics
from spt_core.naming import metric_name, named_metrics, unique_names
from spt_core.verbosity import get_verbosity, set_verbosity

__all__ = [
    "DataChecks",
    "SPTCallback",
    "StageMetrics",
    "__version__",
    "callbacks_metrics",
    "callbacks_modules",
    "checks",
    "distributed",
    "get_verbosity",
    "lookup",
    "metric_name",
    "named_metrics",
    "set_verbosity",
    "unique_names",
]
