"""The input checks every spt package shares: counts, shapes, rows, labels and metrics.

One rule per fault, everywhere: a value of the wrong type raises ``TypeError``, a value of the
right type outside what is allowed raises ``ValueError``, and both name the argument.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from spt_core import distributed


def positive_int(value: object, argument: str, minimum: int = 1) -> int:
    """``value`` if it is an int (not a bool) of at least ``minimum``.

    Raises:
        TypeError: If it is not an int.
        ValueError: If it is below ``minimum``.

    Example:
        >>> positive_int(0, "k")
        Traceback (most recent call last):
        ...
        ValueError: k must be an integer >= 1, got 0
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{argument} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{argument} must be an integer >= {minimum}, got {value!r}")
    return value


def string_key(value: object, argument: str) -> str:
    """``value`` if it is a non-empty string (a key of the step outputs or the batch).

    Raises:
        TypeError: If it is not a string.
        ValueError: If it is empty.

    Example:
        >>> string_key("", "input")
        Traceback (most recent call last):
        ...
        ValueError: input must be a non-empty string key, got ''
    """
    if not isinstance(value, str):
        raise TypeError(f"{argument} must be a non-empty string key, got {value!r}")
    if not value:
        raise ValueError(f"{argument} must be a non-empty string key, got {value!r}")
    return value


def flat_dim(dim: int | Sequence[int] | None, argument: str = "dim") -> int | None:
    """The product of ``dim`` (an int or a shape), ``None`` for ``None``.

    Raises:
        TypeError: If ``dim`` is not an int, a sequence of ints or ``None``.
        ValueError: If a size is below 1 or the shape is empty.

    Example:
        >>> flat_dim((2, 3)), flat_dim(4), flat_dim(None)
        (6, 4, None)
    """
    if dim is None:
        return None
    dims = [dim] if isinstance(dim, int) else list(dim) if isinstance(dim, Sequence) else None
    if dims is None or any(isinstance(d, bool) or not isinstance(d, int) for d in dims):
        raise TypeError(f"{argument} must be None, an int or a tuple/list of ints, got {dim!r}")
    if not dims or any(d < 1 for d in dims):
        raise ValueError(f"{argument} must hold positive sizes, got {dim!r}")
    return math.prod(dims)


def finite_rows(features: Tensor) -> Tensor:
    """Which rows of ``features`` (rows first) hold finite values only, as ``(N,)`` bools.

    Read from each row's smallest and largest value, where a NaN or an infinity shows, so the
    temporaries are ``2 N`` values, not a copy of ``features``; nothing waits for the device.

    Example:
        >>> finite_rows(torch.tensor([[1.0, 2.0], [float("nan"), 0.0], [0.0, float("inf")]]))
        tensor([ True, False, False])
    """
    if features.dim() != 2:
        features = features.reshape(features.shape[0], math.prod(features.shape[1:]))
    if features.shape[1] == 0:
        return torch.ones(features.shape[0], dtype=torch.bool, device=features.device)
    low, high = torch.aminmax(features, dim=1)
    return torch.isfinite(low) & torch.isfinite(high)


def check_label_range(
    top: int, num_classes: int | None, where: str, *, classes_from: str = "num_classes"
) -> None:
    """Raise if ``top``, the largest label seen in ``where``, has no class in ``num_classes``.

    Args:
        top: The largest label seen (``-1`` when none was).
        num_classes: How many classes there are; ``None`` checks nothing.
        where: What holds the labels, for the message ("the bank", "target").
        classes_from: What sets ``num_classes``, for the message.

    Raises:
        ValueError: If ``top >= num_classes``, naming the label and the size that would fit.

    Example:
        >>> check_label_range(9, 10, "the bank")
        >>> check_label_range(10, 10, "the bank")
        Traceback (most recent call last):
        ...
        ValueError: the bank holds label 10, but num_classes gives 10 classes ... at least 11
    """
    if num_classes is not None and top >= num_classes:
        raise ValueError(
            f"{where} holds label {top}, but {classes_from} gives {num_classes} classes (labels "
            f"must be < {num_classes}; negative labels mark unlabelled rows): make it at least "
            f"{top + 1}"
        )


def is_metric(metric: object) -> bool:
    """Whether ``metric`` has ``update``, ``compute`` and ``reset`` (as a torchmetrics
    ``Metric`` has)."""
    return all(callable(getattr(metric, part, None)) for part in ("update", "compute", "reset"))


def check_metrics(metrics: Mapping[str, Any], owner: str) -> None:
    """Raise if an entry of ``{name: metric}`` is not a metric (see :func:`is_metric`).

    Raises:
        TypeError: Naming ``owner``, the key and what was given.

    Example:
        >>> check_metrics({"acc": len}, "OnlineKNN[name=knn]")
        Traceback (most recent call last):
        ...
        TypeError: OnlineKNN[name=knn]: metrics['acc'] must be a metric with update/...
    """
    for key, metric in metrics.items():
        if not is_metric(metric):
            raise TypeError(
                f"{owner}: metrics[{key!r}] must be a metric with update/compute/reset "
                f"(a torchmetrics Metric), got {metric!r}"
            )


class DataChecks:
    """Counts rows with non-finite features and tracks the largest label, per stage and
    dataloader, so that callbacks report a NaN feature or a label outside the classes at the
    end of an epoch, before they log, instead of averaging it into a metric.

    Example:
        >>> checks = DataChecks()
        >>> rows = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
        >>> checks.update("val", 0, rows, torch.tensor([2, 7]))
        tensor([False,  True])
        >>> checks.state("val")  # what a checkpoint written now holds
        tensor([1, 7])
        >>> checks.read("val", num_dataloaders=1)
        [(1, 7)]
        >>> checks.read("val", num_dataloaders=1)  # started over; -1: no label seen
        [(0, -1)]
    """

    def __init__(self) -> None:
        self._totals: dict[tuple[str, int], Tensor] = {}

    def update(self, stage: str, dataloader_idx: int, features: Tensor, labels: Tensor) -> Tensor:
        """Add one batch of ``features`` (rows first) and integer ``labels``, without waiting
        for the device; returns :func:`finite_rows` of ``features``."""
        finite = finite_rows(features)
        top = labels.max() if labels.numel() else labels.new_tensor(-1)
        batch = torch.stack(((~finite).sum(), top.to(finite.device).long()))
        total = self._totals.get((stage, dataloader_idx))
        if total is not None:
            total = total.to(batch.device)  # a no-op, unless a checkpoint put it on the CPU
            batch = torch.stack((total[0] + batch[0], torch.maximum(total[1], batch[1])))
        self._totals[stage, dataloader_idx] = batch
        return finite

    def read(
        self, stage: str, num_dataloaders: int, device: torch.device | None = None
    ) -> list[tuple[int, int]]:
        """``(rows with non-finite features, largest label)`` of each dataloader of ``stage``
        over every rank (``(0, -1)`` where no rank saw a row), then start the stage over.

        Every rank calls it together, with the same ``num_dataloaders``: one collective on
        ``device`` (the module's), one host sync.
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

    def state(
        self,
        stage: str,
        dataloader_idx: int = 0,
        *,
        synchronise: bool = False,
        device: torch.device | None = None,
    ) -> Tensor:
        """``[rows with non-finite features, largest label]`` of ``(stage, dataloader_idx)``
        so far, on the CPU, for a checkpoint written in the middle of an epoch.

        Args:
            stage: The stage.
            dataloader_idx: The loader.
            synchronise: Over every rank (every rank calls it together: one collective on
                ``device``); else this rank's.
            device: Where the collective runs (the module's device).

        Returns:
            A ``(2,)`` long tensor, ``[0, -1]`` where nothing was seen.
        """
        total = self._totals.get((stage, dataloader_idx))
        total = torch.tensor([0, -1], device=device) if total is None else total.to(device)
        if synchronise:
            per_rank = distributed.gather_equal(total[None])
            total = torch.stack((per_rank[:, 0].sum(), per_rank[:, 1].amax()))
        return total.cpu()

    def load(self, stage: str, dataloader_idx: int, state: Tensor) -> None:
        """Restore :meth:`state`'s output (under DDP, that of ``synchronise=True`` on one rank
        only: :meth:`read` adds the other ranks' new counts).

        Args:
            stage: The stage.
            dataloader_idx: The loader.
            state: What :meth:`state` returned.
        """
        self._totals[stage, dataloader_idx] = state.clone()
