"""What an :class:`~spt_probe.OnlineProbe` adds to its trainable checkpoint: the epoch's
running loss and the clean evaluation's schedule."""

from __future__ import annotations

from typing import Any

from spt_core import distributed
from spt_probe._epoch_loss import EpochLoss

__all__ = ["ProbeCheckpoint"]


class ProbeCheckpoint:
    """The checkpoint of an :class:`~spt_probe.OnlineProbe` (a mixin placed before
    :class:`~spt_trainable.TrainableCallback`: it reads ``_epoch_loss``, ``_clean`` and
    ``_device``).

    Under DDP the epoch's running loss sum (``loss_total``) differs between ranks; the
    checkpoint holds its mean over the ranks, which every rank restores, so that a run resumed
    mid-epoch logs the uninterrupted run's ``train/{name}_loss``. The clean schedule is the
    same on every rank.
    """

    def state_dict(self) -> dict[str, Any]:
        clean = {"clean": self._clean.state_dict()} if self._clean else {}
        return {**super().state_dict(), "loss_total": self._epoch_loss.total, **clean}

    def gather_checkpoint_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """:meth:`TrainableCallback.gather_checkpoint_state`'s state with ``loss_total`` made
        its mean over the ranks. Called on every rank while a checkpoint is saved.

        Args:
            state: What :meth:`state_dict` returned on this rank.

        Returns:
            The state to write.
        """
        state = super().gather_checkpoint_state(state)
        if distributed.is_distributed():
            total = EpochLoss.mean_over_ranks(state.get("loss_total"), self._device)
            state = {**state, "loss_total": total}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        self._epoch_loss.load(state.pop("loss_total", None))
        self._clean.load_state_dict(state.pop("clean", {}))
        super().load_state_dict(state)
