"""Checks of what reaches the torchmetrics objects: class labels within ``num_classes`` and
finite values, counted on the device per batch and read once per epoch."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from spt_core import distributed
from spt_metrics.needs import Needs, signature

__all__ = [
    "EpochReport",
    "InputChecks",
    "LabelCheck",
    "LabelReport",
    "batch_label_report",
    "label_position",
    "out_of_range",
]

_INT64 = torch.iinfo(torch.int64)


@dataclass(frozen=True)
class LabelCheck:
    """One metric whose ``target`` argument must hold class labels below ``num_classes``.

    Args:
        metric: The metric's logged name.
        position: Position of the ``target`` source in the callback's list of sources.
        num_classes: The metric's ``num_classes``.
    """

    metric: str
    position: int
    num_classes: int


@dataclass(frozen=True)
class LabelReport:
    """Labels outside ``[0, num_classes)`` that one metric received (its ``ignore_index``,
    ``None`` if it has none, aside)."""

    check: LabelCheck
    count: int
    smallest: int
    largest: int
    ignore_index: Any = None


@dataclass
class EpochReport:
    """What one dataloader's epoch fed its metrics, over every rank.

    Args:
        non_finite: NaN/inf values per source position (only positions that had any).
        labels: One report per metric that received labels outside its classes.
    """

    non_finite: dict[int, int] = field(default_factory=dict)
    labels: list[LabelReport] = field(default_factory=list)


def label_position(metric: Any, needs: Needs) -> int | None:
    """The source position bound to the ``target`` parameter of a metric with an integer
    ``num_classes`` (torchmetrics' multiclass metrics), else ``None``.

    Example:
        >>> from torchmetrics.classification import MulticlassAccuracy
        >>> label_position(MulticlassAccuracy(num_classes=3), Needs(args=(4, 2)))
        2
        >>> label_position(MulticlassAccuracy(num_classes=3), Needs(kwargs={"target": 0}))
        0
    """
    classes = getattr(metric, "num_classes", None)
    if isinstance(classes, bool) or not isinstance(classes, int):
        return None
    sig = signature(metric)
    if sig is None:
        return None
    try:
        bound = sig.bind_partial(*needs.args, **needs.kwargs)
    except TypeError:
        return None
    position = bound.arguments.get("target")
    return position if isinstance(position, int) else None


def out_of_range(target: Tensor, num_classes: int, ignore_index: Any = None) -> Tensor:
    """Which entries of an integer ``target`` are not a class in ``[0, num_classes)``;
    entries equal to ``ignore_index`` are not counted.

    Example:
        >>> out_of_range(torch.tensor([0, 2, 3, -1, -2]), num_classes=3, ignore_index=-1)
        tensor([False, False,  True, False,  True])
    """
    outside = (target < 0) | (target >= num_classes)
    if isinstance(ignore_index, int) and not isinstance(ignore_index, bool):
        outside &= target != ignore_index
    return outside


def batch_label_report(check: LabelCheck, target: Any, metric: Any) -> LabelReport | None:
    """The labels of one batch outside ``check``'s classes, read on the host (one sync: for
    an update that already failed), or ``None`` when there are none.

    Example:
        >>> report = batch_label_report(LabelCheck("acc", 1, 3), torch.tensor([0, 4, 9]), None)
        >>> report.count, report.smallest, report.largest
        (2, 4, 9)
    """
    if not _is_label_tensor(target):
        return None
    ignore_index = getattr(metric, "ignore_index", None)
    outside = target[out_of_range(target, check.num_classes, ignore_index)]
    if not outside.numel():
        return None
    return LabelReport(check, outside.numel(), int(outside.min()), int(outside.max()), ignore_index)


def _is_label_tensor(value: Any) -> bool:
    return isinstance(value, Tensor) and not (value.is_floating_point() or value.is_complex())


class InputChecks:
    """Counts, per stage and dataloader, the NaN/inf values of some sources and the labels
    outside ``num_classes`` of some metrics, without a host sync per batch.

    :meth:`update` adds one batch on the device; :meth:`read` returns the totals of a stage
    over every rank (one collective, one host sync) and starts them over.

    Args:
        finite_positions: Source positions whose floating-point values are counted when not
            finite.
        labels: The metrics whose ``target`` is checked against ``num_classes``.

    Example:
        >>> checks = InputChecks([0], [LabelCheck("acc", 1, num_classes=3)])
        >>> preds, target = torch.tensor([[0.1, float("nan")]]), torch.tensor([5])
        >>> checks.update("val", 0, [preds, target], {"acc": None})
        >>> (report,) = checks.read("val", num_dataloaders=1)
        >>> report.non_finite, [(r.check.metric, r.count, r.largest) for r in report.labels]
        ({0: 1}, [('acc', 1, 5)])
    """

    def __init__(self, finite_positions: Sequence[int], labels: Sequence[LabelCheck]) -> None:
        self.finite_positions = list(finite_positions)
        self.labels = list(labels)
        # Per (stage, dataloader): counts (non-finite per position, then bad labels per
        # metric), and the largest and smallest bad label per metric.
        self._totals: dict[tuple[str, int], tuple[Tensor, Tensor, Tensor]] = {}
        self._ignore_index: dict[str, Any] = {}  # each metric's, as last seen

    def __bool__(self) -> bool:
        return bool(self.finite_positions or self.labels)

    def update(
        self,
        stage: str,
        dataloader_idx: int,
        values: Sequence[Any],
        metrics: Mapping[str, Any],
        device: torch.device | None = None,
    ) -> None:
        """Add one batch: ``values`` by source position, ``metrics`` the live copies by name
        (their ``ignore_index`` is read), ``device`` where the totals are kept."""
        if not self:
            return
        counts = [self._non_finite(values[p], device) for p in self.finite_positions]
        largest, smallest = [], []
        for check in self.labels:
            count, high, low = self._bad_labels(check, values[check.position], metrics, device)
            counts.append(count)
            largest.append(high)
            smallest.append(low)
        batch = (
            torch.stack(counts),
            _stack_or_empty(largest, _INT64.min, device),
            _stack_or_empty(smallest, _INT64.max, device),
        )
        key = (stage, dataloader_idx)
        total = self._totals.get(key)
        if total is not None:
            batch = (
                total[0] + batch[0],
                torch.maximum(total[1], batch[1]),
                torch.minimum(total[2], batch[2]),
            )
        self._totals[key] = batch

    def read(
        self, stage: str, num_dataloaders: int, device: torch.device | None = None
    ) -> list[EpochReport]:
        """One :class:`EpochReport` per dataloader of ``stage``, over every rank, then start
        the stage over.

        Every rank must call it together with the same ``num_dataloaders``; nothing is
        exchanged when there is nothing to check. ``device`` is where the collective runs.
        """
        if not self or num_dataloaders < 1:
            return [EpochReport() for _ in range(max(num_dataloaders, 0))]
        local = torch.stack(
            [self._flat(self._totals.pop((stage, i), None), device) for i in range(num_dataloaders)]
        )
        per_rank = distributed.gather_uneven(local[None]).tolist()  # the one host sync
        return [self._report([rank[i] for rank in per_rank]) for i in range(num_dataloaders)]

    # ------------------------------------------------------------------ internals

    def _non_finite(self, value: Any, device: torch.device | None) -> Tensor:
        if isinstance(value, Tensor) and (value.is_floating_point() or value.is_complex()):
            return (~torch.isfinite(value.detach())).sum().to(device=device, dtype=torch.int64)
        bad = isinstance(value, float) and not math.isfinite(value)
        return torch.tensor(int(bad), device=device)

    def _bad_labels(
        self,
        check: LabelCheck,
        target: Any,
        metrics: Mapping[str, Any],
        device: torch.device | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        if not _is_label_tensor(target) or target.numel() == 0:
            return (
                torch.tensor(0, device=device),
                torch.tensor(_INT64.min, device=device),
                torch.tensor(_INT64.max, device=device),
            )
        target = target.detach().long()
        ignore_index = getattr(metrics.get(check.metric), "ignore_index", None)
        self._ignore_index[check.metric] = ignore_index
        outside = out_of_range(target, check.num_classes, ignore_index)
        high = torch.where(outside, target, _INT64.min).max()
        low = torch.where(outside, target, _INT64.max).min()
        return outside.sum().to(device), high.to(device), low.to(device)

    def _flat(
        self, totals: tuple[Tensor, Tensor, Tensor] | None, device: torch.device | None
    ) -> Tensor:
        if totals is None:
            n = len(self.labels)
            totals = (
                torch.zeros(len(self.finite_positions) + n, dtype=torch.int64),
                torch.full((n,), _INT64.min),
                torch.full((n,), _INT64.max),
            )
        return torch.cat([t.to(device=device, dtype=torch.int64) for t in totals])

    def _report(self, rows: list[list[int]]) -> EpochReport:
        f, n = len(self.finite_positions), len(self.labels)
        report = EpochReport()
        for i, position in enumerate(self.finite_positions):
            count = sum(row[i] for row in rows)
            if count:
                report.non_finite[position] = count
        for j, check in enumerate(self.labels):
            count = sum(row[f + j] for row in rows)
            if count:
                largest = max(row[f + n + j] for row in rows)
                smallest = min(row[f + 2 * n + j] for row in rows)
                ignore_index = self._ignore_index.get(check.metric)
                report.labels.append(LabelReport(check, count, smallest, largest, ignore_index))
        return report


def _stack_or_empty(values: list[Tensor], fill: int, device: torch.device | None) -> Tensor:
    if values:
        return torch.stack(values)
    return torch.full((0,), fill, dtype=torch.int64, device=device)
