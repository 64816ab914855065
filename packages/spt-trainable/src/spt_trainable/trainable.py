"""A callback that owns a module, its optimizer and scheduler, and trains them in its hooks."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from torch import Tensor

from spt_core import distributed
from spt_trainable._optimization import OptimizerHost
from spt_trainable._rank_state import mean_buffers, mean_grads, rng_of_ranks
from spt_trainable._stepping import check_stepping, prepare_gradients, run_length, window_size
from spt_trainable.module_factory import ModuleSpec
from spt_trainable.optimizers import OptimizerSpec
from spt_trainable.schedulers import SchedulerSpec

__all__ = ["TrainableCallback"]


class TrainableCallback(OptimizerHost):
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
      checkpoint holds that mean too, also one written mid-epoch (see **Checkpoints**). Every
      rank must call :meth:`backward_and_step` equally often (once per training batch, say);
      the epoch's last, unfinished window is flushed on every rank together, also a rank with
      no batch. Collectives run in an order that depends only on the module's structure.
    - **Mixed precision.** Inputs are detached and cast to the module's dtype; the module's
      forward runs outside autocast (fp32 module on bf16/fp16 features).
    - **Randomness.** Building the module runs on a forked RNG and training on the callback's
      own random stream (checkpointed), so adding the callback does not change the random
      stream the user's model sees, and a dropout probe resumes exactly.
    - **Checkpoints.** :meth:`state_dict` holds the module, optimizer, scheduler, counters and
      any gradient of an unfinished window: a resume continues exactly. Under DDP, what differs
      between ranks is made to resume exactly on every rank when a checkpoint is saved
      (:meth:`gather_checkpoint_state`): an unfinished window's gradients and the
      floating-point buffers become their mean over the ranks (the window's average and the
      buffers' next common value are unchanged by it, up to rounding) and the random stream
      is kept for every rank, each rank restoring its own (rank 0's when the number of ranks
      changed). Parameters, optimizer and scheduler states and counters are the same on every
      rank. A checkpoint written at an epoch's last batch (``ModelCheckpoint(
      every_n_train_steps=k)``, ``k`` dividing the epoch) resumes in the next epoch without
      that epoch's ``on_train_epoch_end``: :meth:`end_skipped_epoch` then replays it.

    Args:
        name: Unique identifier (logging, ``callbacks_modules`` key, checkpoint slot).
        module: An ``nn.Module``, a callable returning one (called with no argument, or with
            the LightningModule when it takes a required argument), or a Hydra config
            (``_target_``). Subclasses may instead override :meth:`build_module`.
        optimizer: A form accepted by :func:`~spt_trainable.create_optimizer`; ``None`` uses
            :meth:`default_optimizer`.
        scheduler: A form accepted by :func:`~spt_trainable.create_scheduler`; ``None`` uses
            :meth:`default_scheduler` (a constant learning rate).
        accumulate_grad_batches: Number of calls of :meth:`backward_and_step` per step.
        gradient_clip_val: Clip threshold; ``None`` disables clipping.
        gradient_clip_algorithm: ``"norm"`` (total 2-norm) or ``"value"``.
        verbose: See :class:`~spt_core.SPTCallback`.

    Raises:
        TypeError: For a module, optimizer or scheduler of no accepted form, a non-int
            ``accumulate_grad_batches`` or a ``gradient_clip_val`` that is not a number.
        ValueError: For ``accumulate_grad_batches < 1``, a non-positive
            ``gradient_clip_val`` or an unknown ``gradient_clip_algorithm``; the message
            names the ``state_key`` and the argument.

    Example:
        >>> from torch import nn
        >>> cb = TrainableCallback("head", module=nn.Linear(4, 2), optimizer="SGD")
        >>> cb.state_key, cb.accumulate_grad_batches
        ('TrainableCallback[name=head]', 1)
    """

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
        super().__init__(name, module, optimizer, scheduler, verbose)
        check_stepping(
            accumulate_grad_batches, gradient_clip_val, gradient_clip_algorithm, self.state_key
        )
        self.accumulate_grad_batches = accumulate_grad_batches
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = gradient_clip_algorithm
        self._pending: dict[str, Any] = {}
        self.optimizer_steps = 0
        self._window_count = 0
        self._window_size = accumulate_grad_batches
        self._open_epoch: int | None = None  # the epoch whose on_train_epoch_end is to come

    # ------------------------------------------------------------------ what subclasses use

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
            self._window_size = window_size(self.accumulate_grad_batches, trainer, batch_idx)
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
        if not distributed.any_rank(self._window_count > 0, self._device):
            return False
        count = self._window_count
        self._step(trainer, rescale=self._window_size / count if count else 1.0)
        return True

    # ------------------------------------------------------------------ Lightning hooks

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and self._optimizer is None:
            self._build_optimizer(
                lambda interval: run_length(trainer, interval, self.accumulate_grad_batches)
            )
            self.debug(
                f"training {type(self.module).__name__} with {type(self.optimizer).__name__}, "
                f"{type(self.scheduler).__name__} every {self.scheduler_config.interval}, "
                f"{self.accumulate_grad_batches} batch(es) per step"
            )
        if stage == "fit" and not self._pending:
            self._window_count = 0
            self.optimizer.zero_grad(set_to_none=True)
        self._apply_pending()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._open_epoch is not None and self._open_epoch < trainer.current_epoch:
            self.end_skipped_epoch(trainer, pl_module)

    def on_train_batch_start(self, trainer: Trainer, *args: Any) -> None:
        self._open_epoch = trainer.current_epoch

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._end_epoch(trainer, step_monitored=True)

    def end_skipped_epoch(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Replay, without logging, the ``on_train_epoch_end`` that Lightning skips when it
        resumes a checkpoint written after the epoch's last batch and before that hook (the
        uninterrupted run ran it after writing the checkpoint).

        Called at ``on_train_start`` on every rank together: it flushes an unfinished window,
        averages the buffers and steps an epoch-interval scheduler unless it monitors a value
        (as Lightning leaves its own). Subclasses drop the epoch's running values too.

        Args:
            trainer: The resumed Trainer.
            pl_module: Its LightningModule.
        """
        self._end_epoch(trainer, step_monitored=False)

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
                open_epoch=self._open_epoch,
                grads=[p.grad for p in self._parameters()] if self._window_count else None,
                rng=self._random.state,
            )
        return state

    def gather_checkpoint_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """This rank's :meth:`state_dict` with the values that differ between ranks made
        common: an unfinished window's gradients and the module's floating-point buffers are
        replaced by their mean over the ranks, and ``rng_of_ranks`` lists every rank's random
        stream (``rng`` stays rank 0's).

        Called on every rank while a checkpoint is saved; the collectives depend only on the
        module's structure. The live module and its gradients are left as they are.

        Args:
            state: What :meth:`state_dict` returned on this rank.

        Returns:
            The state to write (``state`` itself without a process group).
        """
        state = super().gather_checkpoint_state(state)
        if self._module is None or not distributed.is_distributed():
            return state
        state = dict(state)
        state["module"] = mean_buffers(self.module, state["module"])
        if "optimizer" in state:
            state["grads"] = mean_grads(self._parameters(), state["grads"], self._device)
            rngs = rng_of_ranks(state["rng"], self._device)
            if rngs is not None:
                state["rng_of_ranks"] = rngs
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict)
        self._apply_pending()

    # ------------------------------------------------------------------ internals

    def _end_epoch(self, trainer: Trainer, step_monitored: bool) -> None:
        self.flush(trainer)
        self.sync_buffers()
        if step_monitored or not getattr(self._scheduler_config, "needs_monitor", False):
            self._step_scheduler(trainer, "epoch")
        self._open_epoch = None

    def _step(self, trainer: Trainer, rescale: float) -> None:
        prepare_gradients(
            self._parameters(), rescale, self.gradient_clip_val, self.gradient_clip_algorithm
        )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer_steps += 1
        self._window_count = 0
        self._step_scheduler(trainer, "step")

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
            self._open_epoch = state.pop("open_epoch", None)
            self._random.state = state.pop("rng", None)
            rngs = state.pop("rng_of_ranks", None)
            if rngs is not None and len(rngs) == distributed.world_size():
                self._random.state = rngs[distributed.rank()]
            grads = state.pop("grads")
            if grads is not None:
                for p, grad in zip(self._parameters(), grads, strict=True):
                    p.grad = None if grad is None else grad.to(p.device, p.dtype).clone()
