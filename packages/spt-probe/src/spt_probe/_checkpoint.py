"""What an :class:`~spt_probe.OnlineProbe` adds to its trainable checkpoint: the epoch's
running loss, its training metrics so far and the clean evaluation's schedule."""

from __future__ import annotations

from typing import Any

from spt_core import distributed
from spt_probe._epoch_loss import EpochLoss

__all__ = ["ProbeCheckpoint"]


class ProbeCheckpoint:
    """The checkpoint of an :class:`~spt_probe.OnlineProbe` (a mixin placed before
    :class:`~spt_trainable.TrainableCallback`: it reads ``_epoch_loss``, ``_metrics``,
    ``_clean`` and ``_device``).

    A run resumed from a checkpoint written mid-epoch logs the uninterrupted run's
    ``train/{name}_loss`` and ``train/{name}_{metric}``. Under DDP the epoch's running loss sum
    (``loss_total``) differs between ranks: the checkpoint holds its mean over the ranks, which
    every rank restores. The training metrics' states and the epoch's data checks hold every
    rank's part (torchmetrics' sync), which rank 0 restores. The clean schedule is the same on
    every rank.
    """

    def state_dict(self) -> dict[str, Any]:
        clean = {"clean": self._clean.state_dict()} if self._clean else {}
        train = self._metrics.train_state(synchronise=False, device=None)
        state = {**super().state_dict(), "loss_total": self._epoch_loss.total, **clean}
        return {**state, "train_metrics": train}

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
            train = self._metrics.train_state(synchronise=True, device=self._device)
            state = {**state, "loss_total": total, "train_metrics": train}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        self._epoch_loss.load(state.pop("loss_total", None))
        self._clean.load_state_dict(state.pop("clean", {}))
        train = state.pop("train_metrics", None)
        if train is not None and distributed.rank() == 0:  # it holds every rank's part
            self._metrics.load_train_state(train)
        super().load_state_dict(state)
