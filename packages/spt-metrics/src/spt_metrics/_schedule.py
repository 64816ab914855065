"""When ``MetricsCallback`` collects and logs: its ``every_n_*`` arguments, checked, and the
counters that decide (checkpointed, so that a resumed run logs on the same batches)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lightning.pytorch import Trainer

from spt_core.loops import validates_after_last_batch

__all__ = ["EVERY_STEP", "Schedule", "check_bools"]


class _Default(int):
    """An ``int`` default that can be told apart from the same value passed explicitly."""


EVERY_STEP = _Default(1)
"""The default of ``every_n_train_steps``: 1, unless ``every_n_train_epochs`` is set."""


@dataclass
class Schedule:
    """The resolved schedule (``0`` = never) and the counters.

    Example:
        >>> schedule = Schedule.from_arguments(EVERY_STEP, 2, None)
        >>> schedule.every_n_train_steps, schedule.every_n_train_epochs
        (0, 2)
        >>> [schedule.end_train_epoch() for _ in range(4)]
        [False, True, False, True]
    """

    every_n_train_steps: int
    every_n_train_epochs: int
    every_n_val_epochs: int
    train_batches: int = 0
    train_epochs: int = 0
    val_runs: int = 0
    open_epoch: int | None = None  # the epoch whose on_train_epoch_end is to come

    @classmethod
    def from_arguments(
        cls,
        every_n_train_steps: Any,
        every_n_train_epochs: Any,
        every_n_val_epochs: Any,
        owner: str = "MetricsCallback",
    ) -> Schedule:
        """Check the arguments as ``MetricsCallback`` takes them; messages start with
        ``owner`` (its ``state_key``).

        Raises:
            TypeError: If one is not an int or ``None``.
            ValueError: If one is negative, or if ``every_n_train_steps`` was given a
                positive value as well as ``every_n_train_epochs``.

        Example:
            >>> Schedule.from_arguments(1.5, None, 1, "MetricsCallback[name=m]")
            Traceback (most recent call last):
            ...
            TypeError: MetricsCallback[name=m]: every_n_train_steps must be an int or None, got 1.5
        """
        _check_every(f"{owner}: every_n_train_steps", every_n_train_steps)
        _check_every(f"{owner}: every_n_train_epochs", every_n_train_epochs)
        _check_every(f"{owner}: every_n_val_epochs", every_n_val_epochs)
        if every_n_train_epochs:
            if every_n_train_steps is not EVERY_STEP and every_n_train_steps:
                raise ValueError(
                    f"{owner}: every_n_train_steps={every_n_train_steps} and "
                    f"every_n_train_epochs={every_n_train_epochs} are mutually exclusive; set "
                    "one of them (or set the other to None)"
                )
            every_n_train_steps = None
        return cls(
            int(every_n_train_steps or 0),
            int(every_n_train_epochs or 0),
            int(every_n_val_epochs or 0),
        )

    def collects_train_epoch(self) -> bool:
        """Whether the training epoch about to start feeds the metrics."""
        m = self.every_n_train_epochs
        return bool(self.every_n_train_steps) or bool(m and (self.train_epochs + 1) % m == 0)

    def end_train_batch(self, epoch: int) -> bool:
        """Count a training batch of ``epoch``; whether the step schedule logs after it."""
        self.train_batches += 1
        self.open_epoch = epoch
        k = self.every_n_train_steps
        return bool(k and self.train_batches % k == 0)

    def end_train_epoch(self) -> bool:
        """Count a training epoch; whether the epoch schedule logs at its end."""
        logs = bool(self.every_n_train_epochs) and self.collects_train_epoch()
        self.train_epochs += 1
        self.open_epoch = None
        return logs

    def end_val_run(self) -> None:
        """Count a validation run (not a sanity check)."""
        self.val_runs += 1

    def end_skipped_epoch(self, trainer: Trainer) -> bool:
        """At the start of a fit, count the epoch whose end a resume skipped, if any.

        Lightning resumes a checkpoint written after an epoch's last batch but before its
        ``on_train_epoch_end`` in the next epoch, skipping that hook and the validation run
        that follows that batch, if any; the uninterrupted run ran and logged them.

        Returns:
            Whether the skipped epoch end logged (and reset) the epoch schedule's window.
        """
        epoch = self.open_epoch
        if epoch is None or epoch >= trainer.current_epoch:
            return False
        if validates_after_last_batch(trainer, epoch):
            self.end_val_run()
        return self.end_train_epoch()

    def collects_val_run(self) -> bool:
        """Whether the validation run about to start (not a sanity check) is logged."""
        n = self.every_n_val_epochs
        return bool(n) and (self.val_runs + 1) % n == 0

    def mismatch(self, log_every_n_steps: int) -> str | None:
        """Why some step values never reach the logger, or ``None`` when all can.

        Example:
            >>> Schedule(3, 0, 1).mismatch(log_every_n_steps=5)
            "train values are logged every 3 batches and log_every_n_steps=5, so only every 15th..."
            >>> Schedule(2, 0, 1).mismatch(log_every_n_steps=4) is None
            True
        """
        k, every = self.every_n_train_steps, log_every_n_steps
        if not (k and every and k % every and every % k):
            return None
        return (
            f"train values are logged every {k} batches and log_every_n_steps={every}, so "
            f"only every {math.lcm(k, every)}th batch's value reaches the logger; make one "
            "a multiple of the other"
        )

    def counters(self) -> dict[str, int]:
        """The counters, for a checkpoint."""
        return {
            "train_batches": self.train_batches,
            "train_epochs": self.train_epochs,
            "val_runs": self.val_runs,
            "open_epoch": self.open_epoch,
        }

    def load_counters(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`counters`."""
        self.train_batches = int(state.get("train_batches", 0))
        self.train_epochs = int(state.get("train_epochs", 0))
        self.val_runs = int(state.get("val_runs", 0))
        self.open_epoch = state.get("open_epoch")


def check_bools(owner: str = "MetricsCallback", **flags: Any) -> None:
    """Raise a ``TypeError`` naming ``owner`` and the first flag that is not a bool.

    Example:
        >>> check_bools("MetricsCallback[name=metrics]", prog_bar="yes")
        Traceback (most recent call last):
        ...
        TypeError: MetricsCallback[name=metrics]: prog_bar must be a bool, got 'yes'
    """
    for argument, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"{owner}: {argument} must be a bool, got {value!r}")


def _check_every(argument: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{argument} must be an int or None, got {value!r}")
    if value < 0:
        raise ValueError(f"{argument} must be >= 0 (0 or None: never), got {value}")
