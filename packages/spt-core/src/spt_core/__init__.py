"""spt-core: the shared base of the spt callbacks."""

from spt_core import distributed
from spt_core.__about__ import __version__
from spt_core.callback import (
    SPTCallback,
    callbacks_metrics,
    callbacks_modules,
    logger_writes_this_step,
)
from spt_core.data_checks import DataChecks
from spt_core.keys import lookup
from spt_core.lars import LARS
from spt_core.metrics import StageMetrics, metric_name, named_metrics, unique_names
from spt_core.module_factory import build_module, input_width
from spt_core.optim import SchedulerConfig, create_optimizer, create_scheduler
from spt_core.trainable import TrainableCallback
from spt_core.verbosity import get_verbosity, set_verbosity

__all__ = [
    "LARS",
    "DataChecks",
    "SPTCallback",
    "SchedulerConfig",
    "StageMetrics",
    "TrainableCallback",
    "__version__",
    "build_module",
    "callbacks_metrics",
    "callbacks_modules",
    "create_optimizer",
    "create_scheduler",
    "distributed",
    "get_verbosity",
    "input_width",
    "logger_writes_this_step",
    "lookup",
    "metric_name",
    "named_metrics",
    "set_verbosity",
    "unique_names",
]
