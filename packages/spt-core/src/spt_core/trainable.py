"""A callback that owns a module, its optimizer and scheduler, and trains them in its hooks."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor, nn
from torch.optim import Optimizer

from spt_core import distributed
from spt_core.callback import SPTCallback, callbacks_modules
from spt_core.module_factory import ModuleSpec, build_module, check_module, input_width
from spt_core.optim import (
    OptimizerSpec,
    SchedulerConfig,
    SchedulerSpec,
    check_optimizer,
    check_scheduler,
    create_optimizer,
    create_scheduler,
)

__all__ = ["TrainableCallback"]

_CLIP_ALGORITHMS = ("norm", "value")


class TrainableCallback(SPTCallback):
    """Base of callbacks that train their own ``nn.Module`` next to the user's model.

    The callback builds its module at ``setup``, puts it on the LightningModule's device,
    exposes it as ``pl_module.callbacks_modules[name]`` (a plain dict, never a submodule),
    and owns its optimizer and scheduler. A subclass computes a loss inside its own hooks and
    hands it to :meth:`backward_and_step`, which takes care of the rest::

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            x = self.prepare_input(lookup(self.input, outputs, batch, owner=self.state_key))
            with self.training_context() as module:
                loss = my_loss(module(x))
            self.backward_and_step(loss, trainer, batch_idx)

    What the base class guarantees:

    - **Accumulation.** Gradients of ``accumulate_grad_batches`` calls are summed, each loss
      scaled by ``1 / window``; the last window of an epoch is shorter when the epoch does not
      divide evenly, and is scaled by its real size (known in advance from
      ``trainer.num_training_batches`` when ``batch_idx`` is passed; otherwise the gradients
      are rescaled when the window is flushed at the end of the epoch). No gradient crosses an
      epoch boundary.
    - **Clipping** by norm or value, after the cross-rank average.
    - **DDP.** The module starts from rank 0's parameters and buffers on every rank and
      gradients are averaged across ranks before each step, so the parameters stay identical.
      Buffers that training updates from each rank's own rows (BatchNorm running statistics)
      drift apart within an epoch; they are made identical again before every validation or
      test run and at the end of every training epoch: floating-point buffers become their
      mean over the ranks, other buffers (``num_batches_tracked``) take rank 0's values. A
      checkpoint written at those points (Lightning writes them there) holds that common
      value; one written mid-epoch holds rank 0's. Every rank must call
      :meth:`backward_and_step` equally often (once per training batch, say); the epoch's
      last, unfinished window is flushed on every rank together, also a rank with no batch.
      Collectives run in an order that depends only on the module's structure, never on a
      set's or a hash's order, so ranks cannot issue them in different orders.
    - **Mixed precision.** Inputs are detached and cast to the module's dtype; the module's
      forward runs outside autocast (fp32 module on bf16/fp16 features).
    - **Randomness.** Building the module runs on a forked RNG and training on the callback's
      own random stream (checkpointed), so adding the callback does not change the random
      stream the user's model sees, and a dropout probe resumes exactly.
    - **Checkpoints.** :meth:`state_dict` holds the module, optimizer, scheduler, counters and
      any gradient of an unfinished window: a resume continues exactly.

    Args:
        name: Unique identifier (logging, ``callbacks_modules`` key, checkpoint slot).
        module: An ``nn.Module``, a callable returning one (called with no argument, or with
            the LightningModule when it takes a required argument), or a Hydra config
            (``_target_``). Subclasses may instead override :meth:`build_module`.
        optimizer: A form accepted by :func:`spt_core.optim.create_optimizer`; ``None`` uses
            :meth:`default_optimizer`.
        scheduler: A form accepted by :func:`spt_core.optim.create_scheduler`; ``None`` uses
            :meth:`default_scheduler` (a constant learning rate).
        accumulate_grad_batches: Number of calls of :meth:`backward_and_step` per step.
        gradient_clip_val: Clip threshold; ``None`` disables clipping.
        gradient_clip_algorithm: ``"norm"`` (total 2-norm) or ``"value"``.
        verbose: See :class:`~spt_core.SPTCallback`.

    Raises:
        TypeError: For a module, optimizer or scheduler of no accepted form.
        ValueError: For ``accumulate_grad_batches < 1``, a non-positive
            ``gradient_clip_val`` or an unknown ``gradient_clip_algorithm``.

    Example:
        >>> cb = TrainableCallback("head", module=torch.nn.Linear(4, 2), optimizer="SGD")
        >>> cb.state_key, cb.accumulate_grad_batches
        ('TrainableCallback[name=head]', 1)
    """

    #: How the module is called in the subclass's own signature, for error messages.
    module_argument = "module"

    def __init__(
        self,
        name: str,
        module: ModuleSpec | None = None,
        optimizer: OptimizerSpec | None = None,
        scheduler: SchedulerSpec | None = None,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
        verbose: bool | None = None,
    ) -> None:
        super().__init__(name, verbose=verbose)
        if module is not None:
            check_module(module, self.module_argument)
        if optimizer is not None:
            check_optimizer(optimizer, "optimizer")
        if scheduler is not None:
            check_scheduler(scheduler, "scheduler")
        if (
            isinstance(accumulate_grad_batches, bool)
            or not isinstance(accumulate_grad_batches, int)
            or accumulate_grad_batches < 1
        ):
            raise ValueError(
                f"accumulate_grad_batches must be an int >= 1, got {accumulate_grad_batches!r}"
            )
        if gradient_clip_val is not None and (
            isinstance(gradient_clip_val, bool)
            or not isinstance(gradient_clip_val, (int, float))
            or not gradient_clip_val > 0
        ):
            raise ValueError(
                f"gradient_clip_val must be a number > 0 or None, got {gradient_clip_val!r}"
            )
        if gradient_clip_algorithm not in _CLIP_ALGORITHMS:
            raise ValueError(
                f"gradient_clip_algorithm must be one of {_CLIP_ALGORITHMS}, "
                f"got {gradient_clip_algorithm!r}"
            )
        self._module_spec = module
        self._optimizer_spec = optimizer
        self._scheduler_spec = scheduler
        self.accumulate_grad_batches = accumulate_grad_batches
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = gradient_clip_algorithm
        self._module: nn.Module | None = None
        self._optimizer: Optimizer | None = None
        self._scheduler_config: SchedulerConfig | None = None
        self._device: torch.device | None = None
        self._dtype = torch.float32
        self._input_width: int | None = None
        self._pending: dict[str, Any] = {}
        self._logged: dict[str, Tensor] = {}
        self._rng_state: dict[str, Any] | None = None
        self.optimizer_steps = 0
        self._window_count = 0
        self._window_size = accumulate_grad_batches

    # ------------------------------------------------------------------ what subclasses tune

    def build_module(self, pl_module: LightningModule) -> nn.Module:
        """Build the trained module; called once, at the first ``setup``.

        The default resolves the ``module`` argument. Override it to build from other
        arguments (for example a projection sized from the data).
        """
        if self._module_spec is None:
            raise ValueError(
                f"{self.state_key}: no module to train; pass {self.module_argument}=... "
                "or override build_module"
            )
        return build_module(self._module_spec, pl_module, self.module_argument)

    def default_optimizer(self) -> OptimizerSpec:
        """The optimizer form used when ``optimizer=None``: AdamW with lr 1e-3."""
        return {"type": "AdamW", "lr": 1e-3}

    def default_scheduler(self) -> SchedulerSpec:
        """The scheduler form used when ``scheduler=None``: a constant learning rate (stepped
        once per epoch, which costs nothing per batch)."""
        constant = functools.partial(torch.optim.lr_scheduler.ConstantLR, factor=1.0, total_iters=0)
        return {"scheduler": constant, "interval": "epoch"}

    # ------------------------------------------------------------------ what subclasses use

    @property
    def module(self) -> nn.Module:
        """The trained module (available from the first ``setup`` on)."""
        if self._module is None:
            raise RuntimeError(f"{self.state_key}: the module is built at setup; none yet")
        return self._module

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

    def prepare_input(self, x: Tensor) -> Tensor:
        """``x`` detached and cast to the module's device and floating dtype."""
        x = x.detach()
        dtype = self._dtype if x.is_floating_point() else x.dtype
        return x.to(device=self._device or x.device, dtype=dtype)

    def check_input_width(self, features: Tensor, key: str) -> None:
        """Raise a ``ValueError`` naming this callback, ``key`` and both sizes when the rows of
        ``features`` (their last dimension) do not fit the module's first layer.

        Only a first ``nn.Linear`` (alone or first in an ``nn.Sequential``) declares a width;
        other modules are not checked. Shapes only: no host sync.
        """
        width = self._input_width
        if width is not None and features.shape[-1] != width:
            raise ValueError(
                f"{self.state_key}: '{key}' has {features.shape[-1]} features per row, but the "
                f"{self.module_argument}'s first layer takes {width}"
            )

    @contextmanager
    def training_context(self) -> Iterator[nn.Module]:
        """Module in train mode, gradients on, autocast off, on the callback's own random
        stream (see the class notes); yields the module."""
        module = self.module
        module.train()
        with self._own_rng(), torch.enable_grad(), self._no_autocast():
            yield module

    @contextmanager
    def evaluation_context(self) -> Iterator[nn.Module]:
        """Module in eval mode, no gradients, autocast off; yields the module."""
        module = self.module
        module.eval()
        with torch.no_grad(), self._no_autocast():
            yield module

    def backward_and_step(
        self, loss: Tensor, trainer: Trainer, batch_idx: int | None = None
    ) -> bool:
        """Accumulate ``loss``'s gradient and step when the window is full.

        Call it once per training batch (or once per update, for callbacks that skip
        batches). Pass ``batch_idx`` when called on training batches so that the epoch's
        last, shorter window is scaled by its real size; without it the last window is
        flushed at the end of the epoch (see :meth:`flush`).

        Args:
            loss: A scalar loss from the module's forward (unscaled).
            trainer: The running Trainer.
            batch_idx: Index of the training batch in the epoch, or ``None``.

        Returns:
            Whether the optimizer stepped.
        """
        if self._window_count == 0:
            self._window_size = self._window_target(trainer, batch_idx)
        (loss / self._window_size).backward()
        self._window_count += 1
        if self._window_count < self._window_size:
            return False
        self._step(trainer, rescale=1.0)
        return True

    def flush(self, trainer: Trainer) -> bool:
        """Step on an unfinished window, its gradient rescaled to the real number of losses.

        Called at the end of every training epoch; every rank must call it together. Under
        DDP the ranks first agree whether any of them holds an unfinished window (one
        collective); if one does, all step together, a rank without one adding a zero
        gradient to the average.

        Returns:
            Whether the optimizer stepped.
        """
        pending = self._window_count > 0
        if distributed.is_distributed():
            pending = distributed.any_rank(pending, self._device)
        if not pending:
            return False
        count = self._window_count
        self._step(trainer, rescale=self._window_size / count if count else 1.0)
        return True

    def sync_buffers(self) -> None:
        """Make the module's buffers identical on every rank: floating-point buffers (such as
        BatchNorm running statistics, which each rank updates from its own rows) become their
        mean over the ranks, other buffers take rank 0's values.

        One collective per buffer dtype, in the module's buffer order; nothing without a
        process group or without buffers. Every rank must call it together (the base class does, at
        validation and test start and at the end of each training epoch).
        """
        if self._module is None or not distributed.is_distributed():
            return
        buffers = list(self._module.buffers())
        distributed.all_reduce_mean([b for b in buffers if b.is_floating_point()])
        distributed.broadcast_([b for b in buffers if not b.is_floating_point()])

    def log_values(
        self, pl_module: LightningModule, values: dict[str, Tensor], **kwargs: Any
    ) -> None:
        """``pl_module.log`` each value (``kwargs`` go to it) and remember it for ``monitor``.

        Lightning shows values logged in an epoch-end hook in ``trainer.callback_metrics``
        only after the hook; remembering them lets a ``ReduceLROnPlateau`` that monitors this
        callback's own epoch value use it at once.
        """
        for key, value in values.items():
            pl_module.log(key, value, **kwargs)
        self._logged.update(values)

    # ------------------------------------------------------------------ Lightning hooks

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self._module is None:
            with torch.random.fork_rng(devices=[]):
                module = self.build_module(pl_module)
            if not isinstance(module, nn.Module):
                raise TypeError(f"{self.state_key}: build_module returned {module!r}")
            self._module = module
            self._input_width = input_width(module)
            floats = [p for p in module.parameters() if p.is_floating_point()]
            self._dtype = floats[0].dtype if floats else torch.float32
        self._place(trainer.strategy.root_device)
        self._broadcast_module()
        callbacks_modules(pl_module)[self.name] = self._module
        if stage == "fit" and self._optimizer is None:
            self._build_optimizer(trainer)
        if stage == "fit" and not self._pending:
            self._window_count = 0
            self.optimizer.zero_grad(set_to_none=True)
        self._apply_pending()

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._place(pl_module.device)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._place(pl_module.device)
        self.sync_buffers()

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._place(pl_module.device)
        self.sync_buffers()

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._place(pl_module.device)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.flush(trainer)
        self.sync_buffers()
        self._step_scheduler(trainer, "epoch")

    def state_dict(self) -> dict[str, Any]:
        if self._module is None:
            return dict(self._pending)
        state: dict[str, Any] = {"module": self._module.state_dict()}
        if self._optimizer is not None:
            state.update(
                optimizer=self._optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(),
                optimizer_steps=self.optimizer_steps,
                window_count=self._window_count,
                window_size=self._window_size,
                grads=[p.grad for p in self._parameters()] if self._window_count else None,
                rng=self._rng_state,
            )
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict)
        self._apply_pending()

    # ------------------------------------------------------------------ internals

    def _parameters(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    def _build_optimizer(self, trainer: Trainer) -> None:
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
        self._scheduler_config = create_scheduler(
            optimizer, sched, horizon=lambda interval: self._horizon(trainer, interval)
        )
        self.debug(
            f"training {type(self.module).__name__} with {type(optimizer).__name__}, "
            f"{type(self.scheduler).__name__} every {self.scheduler_config.interval}, "
            f"{self.accumulate_grad_batches} batch(es) per step"
        )

    def _horizon(self, trainer: Trainer, interval: str) -> int | None:
        """How many times a scheduler with this ``interval`` will step during the fit."""
        stepping = trainer.estimated_stepping_batches  # sets the train loader up if needed
        per_epoch = trainer.num_training_batches
        if not (math.isfinite(stepping) and math.isfinite(per_epoch)) or per_epoch < 1:
            return None
        batches = int(stepping) * trainer.accumulate_grad_batches
        if interval == "epoch":
            return math.ceil(batches / per_epoch)
        epochs, rest = divmod(batches, int(per_epoch))
        size = self.accumulate_grad_batches
        return epochs * math.ceil(per_epoch / size) + math.ceil(rest / size)

    def _window_target(self, trainer: Trainer, batch_idx: int | None) -> int:
        size = self.accumulate_grad_batches
        total = trainer.num_training_batches
        if batch_idx is None or not math.isfinite(total):
            return size
        return max(1, min(size, int(total) - batch_idx))

    def _step(self, trainer: Trainer, rescale: float) -> None:
        params = self._parameters()
        if rescale != 1.0:
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(rescale)
        if distributed.is_distributed():
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            distributed.all_reduce_mean([p.grad for p in params])
        if self.gradient_clip_val is not None:
            if self.gradient_clip_algorithm == "norm":
                nn.utils.clip_grad_norm_(params, self.gradient_clip_val)
            else:
                nn.utils.clip_grad_value_(params, self.gradient_clip_val)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer_steps += 1
        self._window_count = 0
        self._step_scheduler(trainer, "step")

    def _step_scheduler(self, trainer: Trainer, interval: str) -> None:
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
        if self._module is None or device == self._device:
            return
        self._module.to(device)
        if self._optimizer is not None:
            for state in self._optimizer.state.values():
                for key, value in state.items():
                    if isinstance(value, Tensor) and value.device != device and value.ndim:
                        state[key] = value.to(device)
        self._device = device

    def _broadcast_module(self) -> None:
        """Give every rank rank 0's parameters and buffers (one collective per dtype, in the
        module's order)."""
        distributed.broadcast_([*self.module.parameters(), *self.module.buffers()])

    def _apply_pending(self) -> None:
        state = self._pending
        if self._module is not None and "module" in state:
            self._module.load_state_dict(state.pop("module"))
            # Known before any optimizer exists: a validate(ckpt_path=...) evaluates a probe
            # that was trained, which callbacks may want to know.
            self.optimizer_steps = state.get("optimizer_steps", self.optimizer_steps)
        if self._optimizer is not None and "optimizer" in state:
            self._optimizer.load_state_dict(state.pop("optimizer"))
            self.scheduler.load_state_dict(state.pop("scheduler"))
            self.optimizer_steps = state.pop("optimizer_steps")
            self._window_count = state.pop("window_count")
            self._window_size = state.pop("window_size")
            self._rng_state = state.pop("rng", None)
            grads = state.pop("grads")
            if grads is not None:
                for p, grad in zip(self._parameters(), grads, strict=True):
                    p.grad = None if grad is None else grad.to(p.device, p.dtype).clone()

    @contextmanager
    def _own_rng(self) -> Iterator[None]:
        """Run on this callback's own random stream; the global stream is left as it was.

        The stream starts as a copy of the global state at the first use and continues from
        call to call; it is checkpointed, so a resumed dropout probe draws the same masks.
        """
        device = self._device if self._device is not None else torch.device("cpu")
        accelerated = device.type != "cpu"
        devices = [device] if accelerated else []
        with torch.random.fork_rng(devices=devices, device_type=device.type):
            rng = self._rng_state
            if rng is not None:
                torch.set_rng_state(rng["cpu"])
                if accelerated and rng.get("device_type") == device.type:
                    _device_module(device).set_rng_state(rng["device"], device)
            yield
            self._rng_state = {"cpu": torch.get_rng_state()}
            if accelerated:
                self._rng_state.update(
                    device_type=device.type,
                    device=_device_module(device).get_rng_state(device),
                )

    def _no_autocast(self) -> Any:
        device_type = self._device.type if self._device is not None else "cpu"
        return torch.autocast(device_type=device_type, enabled=False)


def _device_module(device: torch.device) -> Any:
    """``torch.cuda`` (or the module of another accelerator type) for RNG state calls."""
    return getattr(torch, device.type)
