"""spt-trainable: the training machinery of the spt callbacks that own a module.

``TrainableCallback`` (module, optimizer, scheduler, accumulation, clipping, DDP averaging,
checkpoints), the optimizer and scheduler factory (``spt_trainable.optimizers``,
``spt_trainable.schedulers``, ``spt_trainable.scheduler_defaults``), ``LARS`` and the module
factory (``spt_trainable.module_factory``).
"""

from spt_trainable.__about__ import __version__
from spt_trainable._stepping import logger_writes_this_step
from spt_trainable.lars import LARS
from spt_trainable.module_factory import build_module, input_width
from spt_trainable.optimizers import create_optimizer
from spt_trainable.schedulers import SchedulerConfig, create_scheduler
from spt_trainable.trainable import TrainableCallback

__all__ = [
    "LARS",
    "SchedulerConfig",
    "TrainableCallback",
    "__version__",
    "build_module",
    "create_optimizer",
    "create_scheduler",
    "input_width",
    "logger_writes_this_step",
]
