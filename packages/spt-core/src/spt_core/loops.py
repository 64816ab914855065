"""What Lightning's fit loop does around an epoch's last batch, which a callback resuming from
a checkpoint written there needs to know."""

from __future__ import annotations

import math

from lightning.pytorch import Trainer

__all__ = ["validates_after_last_batch"]


def validates_after_last_batch(trainer: Trainer, epoch: int) -> bool:
    """Whether a fit runs a validation after the last training batch of ``epoch``.

    Lightning's own rule (``check_val_every_n_epoch``, ``val_check_interval``, whether the
    fit validates at all), applied to that batch. A checkpoint written at that batch precedes
    the validation, which Lightning skips when it resumes from it, with the epoch's
    ``on_train_epoch_end``.

    Args:
        trainer: A Trainer whose fit has started (``val_check_batch`` is known).
        epoch: The epoch.

    Returns:
        Whether a validation follows the epoch's last training batch.

    Example:
        >>> from spt_core.testing import quiet_trainer
        >>> trainer = quiet_trainer(check_val_every_n_epoch=2)
        >>> validates_after_last_batch(trainer, 0)  # no fit yet: nothing to validate
        False
    """
    every = trainer.check_val_every_n_epoch
    if not trainer.enable_validation or (every is not None and (epoch + 1) % every):
        return False
    check, batches = trainer.val_check_batch, trainer.num_training_batches
    if check == math.inf or batches == math.inf:
        return True
    last = (epoch + 1) * batches if every is None else batches  # counted from 1
    return int(last) % int(check) == 0
