"""When a periodic evaluation (the clean variants of OnlineKNN and OnlineProbe) is due."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.trainer.states import TrainerFn

from spt_core.checks import positive_int
from spt_core.loops import validates_after_last_batch


class EvaluationSchedule:
    """Every ``every_n_epochs`` training epochs, at a validation; always outside a fit.

    During a fit an evaluation is due at the first validation of the fit (never the sanity
    check), then at the first validation at least ``every_n_epochs`` epochs after the last
    one: epochs ``0, n, 2n, ...`` when every epoch validates, the next validation after that
    when a run validates less often. ``validate`` and ``test`` outside a fit are always due.
    The epoch last evaluated is the whole state: :meth:`reset` at the start of every fit (a
    callback reused in a new fit starts over), then a checkpoint restores it on resume, so a
    resumed run evaluates where the uninterrupted one would have.

    Args:
        every_n_epochs: Training epochs between two evaluations.
        argument: The argument's name, for the error message.

    Raises:
        TypeError: If ``every_n_epochs`` is not an int.
        ValueError: If it is below 1.

    Example:
        >>> from types import SimpleNamespace
        >>> schedule = EvaluationSchedule(2)
        >>> def validation(epoch):
        ...     state = SimpleNamespace(fn=TrainerFn.FITTING)
        ...     return SimpleNamespace(sanity_checking=False, state=state, current_epoch=epoch)
        >>> due = []
        >>> for epoch in range(5):
        ...     if schedule.due(validation(epoch)):
        ...         schedule.mark(validation(epoch))
        ...         due.append(epoch)
        >>> due
        [0, 2, 4]
    """

    def __init__(self, every_n_epochs: int, argument: str = "every_n_epochs") -> None:
        self.every_n_epochs = positive_int(every_n_epochs, argument)
        self.last_epoch: int | None = None

    def due(self, trainer: Trainer) -> bool:
        """Whether the evaluation that starts now is due (the same answer on every rank)."""
        if trainer.sanity_checking:
            return False
        if trainer.state.fn != TrainerFn.FITTING:
            return True
        last = self.last_epoch
        return last is None or trainer.current_epoch >= last + self.every_n_epochs

    def mark(self, trainer: Trainer) -> None:
        """Record that the evaluation due now ran (only a fit's evaluations count)."""
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self.last_epoch = trainer.current_epoch

    def mark_skipped(self, trainer: Trainer, epoch: int) -> None:
        """Record the evaluation of the validation that followed ``epoch``'s last training
        batch, if one was due there: a fit resumed from a checkpoint written at that batch
        starts the next epoch without that validation, which the uninterrupted run ran.

        Args:
            trainer: The resumed Trainer, at ``on_train_start``.
            epoch: The epoch whose end the resume skipped.
        """
        last = self.last_epoch
        due = last is None or epoch >= last + self.every_n_epochs
        if due and validates_after_last_batch(trainer, epoch):
            self.last_epoch = epoch

    def reset(self) -> None:
        """Forget the last evaluation: call it when a fit starts (``setup``)."""
        self.last_epoch = None

    def state_dict(self) -> dict[str, Any]:
        """``{"last_epoch": epoch or None}``."""
        return {"last_epoch": self.last_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.last_epoch = state.get("last_epoch")
