"""The optimizer half of :class:`~spt_trainable.TrainableCallback`: building the optimizer and
the scheduler from the forms users write, and stepping the scheduler."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor, nn
from torch.optim import Optimizer

from spt_trainable._devices import move_optimizer_state
from spt_trainable._host import ModuleHost
from spt_trainable.module_factory import ModuleSpec
from spt_trainable.optimizers import OptimizerSpec, check_optimizer, create_optimizer
from spt_trainable.schedulers import (
    SchedulerConfig,
    SchedulerSpec,
    check_scheduler,
    create_scheduler,
)

__all__ = ["OptimizerHost"]


class OptimizerHost(ModuleHost):
    """A :class:`~spt_trainable._host.ModuleHost` that also owns an optimizer over its
    module's trainable parameters and a learning-rate scheduler (documented, with the training
    loop, in :class:`~spt_trainable.TrainableCallback`).

    Args:
        name: Unique identifier.
        module: See :class:`~spt_trainable._host.ModuleHost`.
        optimizer: A form of :func:`~spt_trainable.create_optimizer`, or ``None`` for
            :meth:`default_optimizer`.
        scheduler: A form of :func:`~spt_trainable.create_scheduler`, or ``None`` for
            :meth:`default_scheduler`.
        verbose: See :class:`~spt_core.SPTCallback`.

    Raises:
        TypeError: For a module, optimizer or scheduler of no accepted form.
        ValueError: For an unknown optimizer or scheduler name or a bad scheduler option.
    """

    def __init__(
        self,
        name: str,
        module: ModuleSpec | None,
        optimizer: OptimizerSpec | None,
        scheduler: SchedulerSpec | None,
        verbose: bool | None,
    ) -> None:
        super().__init__(name, module, verbose)
        if optimizer is not None:
            check_optimizer(optimizer, f"{self.state_key}: optimizer")
        if scheduler is not None:
            check_scheduler(scheduler, f"{self.state_key}: scheduler")
        self._optimizer_spec = optimizer
        self._scheduler_spec = scheduler
        self._optimizer: Optimizer | None = None
        self._scheduler_config: SchedulerConfig | None = None
        self._logged: dict[str, Tensor] = {}

    def default_optimizer(self) -> OptimizerSpec:
        """The optimizer form used when ``optimizer=None``: AdamW with lr 1e-3."""
        return {"type": "AdamW", "lr": 1e-3}

    def default_scheduler(self) -> SchedulerSpec:
        """The scheduler form used when ``scheduler=None``: a constant learning rate (stepped
        once per epoch, which costs nothing per batch)."""
        constant = functools.partial(torch.optim.lr_scheduler.ConstantLR, factor=1.0, total_iters=0)
        return {"scheduler": constant, "interval": "epoch"}

    @property
    def optimizer(self) -> Optimizer:
        """The module's optimizer (built at the first ``setup`` of a fit)."""
        if self._optimizer is None:
            raise RuntimeError(f"{self.state_key}: the optimizer is built when fit starts")
        return self._optimizer

    @property
    def scheduler(self) -> Any:
        """The learning-rate scheduler (built with the optimizer)."""
        if self._scheduler_config is None:
            raise RuntimeError(f"{self.state_key}: the scheduler is built when fit starts")
        return self._scheduler_config.scheduler

    @property
    def scheduler_config(self) -> SchedulerConfig:
        """The scheduler with its ``interval`` / ``monitor`` / ``strict`` options."""
        if self._scheduler_config is None:
            raise RuntimeError(f"{self.state_key}: the scheduler is built when fit starts")
        return self._scheduler_config

    def log_values(
        self, pl_module: LightningModule, values: dict[str, Tensor], **kwargs: Any
    ) -> None:
        """Log each value, already the same on every rank (see
        :meth:`spt_core.SPTCallback.log_agreed`; ``kwargs`` go to ``pl_module.log``), and
        remember it for ``monitor``.

        Lightning shows values logged in an epoch-end hook in ``trainer.callback_metrics``
        only after the hook; remembering them lets a ``ReduceLROnPlateau`` that monitors this
        callback's own epoch value use it at once.
        """
        self.log_agreed(pl_module, values, **kwargs)
        self._logged.update(values)

    # ------------------------------------------------------------------ internals

    def _parameters(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    def _build_optimizer(self, horizon: Callable[[str], int | None]) -> None:
        """Build the optimizer and the scheduler; ``horizon(interval)`` is how many times a
        scheduler with that interval steps during the fit (see
        :func:`~spt_trainable.create_scheduler`)."""
        params = self._parameters()
        if not params:
            raise ValueError(f"{self.state_key}: the module has no trainable parameters")
        spec = (
            self._optimizer_spec if self._optimizer_spec is not None else self.default_optimizer()
        )
        optimizer = create_optimizer(params, spec, "optimizer")
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if held != {id(p) for p in params}:
            raise ValueError(
                f"{self.state_key}: the optimizer must hold exactly the module's trainable "
                "parameters; pass a form that builds it (name, dict, partial) instead"
            )
        self._optimizer = optimizer
        sched = (
            self._scheduler_spec if self._scheduler_spec is not None else self.default_scheduler()
        )
        self._scheduler_config = create_scheduler(optimizer, sched, horizon=horizon)

    def _step_scheduler(self, trainer: Trainer, interval: str) -> None:
        """Step the scheduler if it steps at this ``interval``.

        A scheduler that monitors a value reads it from the values this callback logged
        through :meth:`log_values`, else from ``trainer.callback_metrics``. A value logged
        nowhere is a ``KeyError`` naming this callback when the scheduler is ``strict``;
        otherwise a warning (once per epoch) and no step.
        """
        config = self._scheduler_config
        if config is None or config.interval != interval:
            return
        if not config.needs_monitor:
            config.scheduler.step()
            return
        value = self._logged.get(config.monitor, trainer.callback_metrics.get(config.monitor))
        if value is None:
            message = (
                f"scheduler monitors {config.monitor!r}, which was not logged; logged: "
                f"{sorted({*trainer.callback_metrics, *self._logged})}"
            )
            if config.strict:
                raise KeyError(f"{self.state_key}: {message}")
            self.warn_once(trainer, "monitor", f"{message}; skipping this scheduler step")
            return
        config.scheduler.step(value)

    def _place(self, device: torch.device) -> None:
        moved = self._module is not None and device != self._device
        super()._place(device)
        if moved and self._optimizer is not None:
            move_optimizer_state(self._optimizer, device)
