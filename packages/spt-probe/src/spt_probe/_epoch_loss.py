"""The epoch's mean training loss of a probe, summed on the device and reduced once."""

from __future__ import annotations

import torch
from torch import Tensor

from spt_core import distributed

__all__ = ["EpochLoss"]


class EpochLoss:
    """Sums ``(loss * rows it averages, rows it averages, rows)`` over an epoch's batches
    without a host sync; :meth:`reduce` gives the mean over every rank's counted rows.

    Example:
        >>> total = EpochLoss()
        >>> total.add(torch.tensor(2.0), torch.tensor(3), rows=4)
        >>> total.add(torch.tensor(6.0), torch.tensor(1), rows=4)
        >>> total.reduce(torch.device("cpu"))
        (tensor(3.), True)
        >>> total.reduce(torch.device("cpu"))  # started over
        (None, False)
    """

    def __init__(self) -> None:
        self.total: Tensor | None = None

    def add(self, loss: Tensor, counted: Tensor, rows: int) -> None:
        """Add a batch whose ``loss`` averages ``counted`` of its ``rows`` rows."""
        counted = torch.as_tensor(counted, dtype=torch.float32, device=loss.device)
        batch = torch.stack((loss.float() * counted, counted, torch.full_like(counted, rows)))
        self.total = batch if self.total is None else self.total.to(batch.device) + batch

    def reduce(self, device: torch.device) -> tuple[Tensor | None, bool]:
        """``(mean loss over every rank's counted rows, or None when none counted a row,
        whether any rank had a row)``, then start over.

        One collective and one host sync; every rank calls it, one without a batch too.
        """
        total = self.total if self.total is not None else torch.zeros(3, device=device)
        self.total = None
        distributed.all_reduce_mean([total])  # sums over ranks, up to a common factor
        _, counted, rows = total.tolist()
        return (total[0] / total[1] if counted > 0 else None), rows > 0

    @staticmethod
    def mean_over_ranks(total: Tensor | None, device: torch.device | None) -> Tensor | None:
        """A rank's running ``total`` replaced by its mean over the ranks (``None`` when no
        rank has a row), for a checkpoint: every rank restoring it reduces, at the epoch's
        end, to the mean the uninterrupted run logs. Every rank calls it together (one
        collective, one host sync).

        Example:
            >>> EpochLoss.mean_over_ranks(torch.tensor([6.0, 3.0, 4.0]), None).tolist()
            [6.0, 3.0, 4.0]
            >>> EpochLoss.mean_over_ranks(None, None) is None
            True
        """
        total = torch.zeros(3, device=device) if total is None else total.detach().float().clone()
        distributed.all_reduce_mean([total])
        return total if bool(total[2] > 0) else None

    def load(self, total: Tensor | None) -> None:
        """Restore :attr:`total`; a 0.2 checkpoint's ``(loss * rows, rows)`` counts every row
        as labelled."""
        if total is not None and total.numel() == 2:
            total = torch.cat((total, total[1:]))
        self.total = total
