"""Per-epoch checks of the rows a callback evaluates, kept on the device until epoch end."""

from __future__ import annotations

import torch
from torch import Tensor

from spt_core import distributed

__all__ = ["DataChecks"]


class DataChecks:
    """Counts rows with non-finite features and tracks the largest label, per stage and
    dataloader.

    :meth:`update` runs on every batch without waiting on the device; :meth:`read` returns
    the totals over every rank (one collective, one host sync) and starts them over.
    Callbacks read at the end of an epoch, before they log, so that a label outside the
    classes or a NaN feature is reported instead of being averaged into a metric.

    Example:
        >>> checks = DataChecks()
        >>> rows = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
        >>> checks.update("val", 0, rows, torch.tensor([2, 7]))
        tensor([False,  True])
        >>> checks.read("val", num_dataloaders=1)
        [(1, 7)]
        >>> checks.read("val", num_dataloaders=1)  # started over; -1: no label seen
        [(0, -1)]
    """

    def __init__(self) -> None:
        self._totals: dict[tuple[str, int], Tensor] = {}

    def update(self, stage: str, dataloader_idx: int, features: Tensor, labels: Tensor) -> Tensor:
        """Add one batch of ``features`` (rows first) and integer ``labels``.

        Returns:
            A ``(rows,)`` bool tensor: which rows hold finite features only.
        """
        finite = torch.isfinite(features)
        finite = finite.flatten(1).all(dim=1) if finite.dim() > 1 else finite
        top = labels.max() if labels.numel() else labels.new_tensor(-1)
        batch = torch.stack(((~finite).sum(), top.to(finite.device).long()))
        key = (stage, dataloader_idx)
        total = self._totals.get(key)
        self._totals[key] = (
            batch
            if total is None
            else torch.stack((total[0] + batch[0], torch.maximum(total[1], batch[1])))
        )
        return finite

    def read(
        self, stage: str, num_dataloaders: int, device: torch.device | None = None
    ) -> list[tuple[int, int]]:
        """``(rows with non-finite features, largest label)`` of each dataloader of ``stage``
        over every rank (``(0, -1)`` where no rank saw a row), then start the stage over.

        Every rank must call it together, with the same ``num_dataloaders``; ``device`` is
        where the collective runs (the module's device).
        """
        if num_dataloaders < 1:
            return []
        empty = torch.tensor([0, -1], device=device)
        local = torch.stack(
            [self._totals.pop((stage, i), empty).to(empty.device) for i in range(num_dataloaders)]
        )
        per_rank = distributed.gather_uneven(local[None])  # (ranks, loaders, 2)
        counts = per_rank[..., 0].sum(dim=0).tolist()
        tops = per_rank[..., 1].amax(dim=0).tolist()
        return list(zip(counts, tops, strict=True))
