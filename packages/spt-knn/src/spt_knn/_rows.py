"""The rows ``OnlineKNN`` reads: its queues' (the bank) and each evaluation batch's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from spt_core import distributed, lookup
from spt_queue import OnlineQueue, read_aligned


def queue_rows(
    queues: Sequence[OnlineQueue], n: int, owner: str, *, gather: bool, device: torch.device
) -> tuple[Tensor, Tensor]:
    """This rank's ``n`` most recent features ``(N, D)`` and labels ``(N,)`` of the two
    aligned ``queues`` (with ``gather``, every rank's, each once, in rank order: every rank
    calls together), on ``device``.

    Raises:
        RuntimeError: If the queues received different rows.
        ValueError: If a label row holds more than one value.
        TypeError: If the labels are not integers.
    """
    features, labels = read_aligned(queues, n, owner=owner)
    if gather:
        features, labels = distributed.gather_uneven(features), distributed.gather_uneven(labels)
    rows = features.shape[0]
    features = features.reshape(rows, -1) if rows else features.reshape(0, 0)
    labels = labels.reshape(rows, -1) if rows else labels.reshape(0, 1)
    target = queues[1].key
    if labels.shape[1] != 1:
        raise ValueError(
            f"{owner}: '{target}' must hold one class label per row, got rows of "
            f"{labels.shape[1]} values"
        )
    if rows and (labels.is_floating_point() or labels.is_complex()):
        raise TypeError(f"{owner}: '{target}' must hold integer class labels, got {labels.dtype}")
    return features.to(device), labels[:, 0].to(device=device, dtype=torch.long)


def batch_rows(
    outputs: Any, batch: Any, input: str, target: str, owner: str
) -> tuple[Tensor, Tensor]:
    """A batch's features ``input``, detached and flattened to ``(B, D)``, and its integer
    labels ``target`` ``(B,)`` (each looked up in the step outputs, then the batch).

    Raises:
        TypeError: If a value cannot become a tensor, or the labels are not integers.
        ValueError: If there are not as many labels as rows.
    """
    queries = _tensor(input, outputs, batch, owner).detach()
    queries = queries.flatten(1) if queries.dim() > 1 else queries.reshape(-1, 1)
    targets = _tensor(target, outputs, batch, owner).reshape(-1)
    if targets.shape[0] != queries.shape[0]:
        raise ValueError(
            f"{owner}: '{input}' has {queries.shape[0]} rows but '{target}' has "
            f"{targets.shape[0]} labels"
        )
    if targets.is_floating_point() or targets.is_complex():
        raise TypeError(
            f"{owner}: '{target}' must hold integer class labels, got {targets.dtype}; convert "
            "them with .long() in the dataset or the step"
        )
    return queries, targets


def _tensor(key: str, outputs: Any, batch: Any, owner: str) -> Tensor:
    value = lookup(key, outputs, batch, owner=owner)
    if isinstance(value, Tensor):
        return value
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        first = value[0] if isinstance(value, (list, tuple)) and value else value
        raise TypeError(
            f"{owner}: '{key}' must be a tensor or a sequence of numbers, got "
            f"{type(value).__name__} of {type(first).__name__} ({first!r}); map strings to "
            "class indices in the dataset or the step"
        ) from error
