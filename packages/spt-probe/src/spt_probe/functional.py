"""The probe's default loss, as a pure function."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def masked_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Mean cross-entropy over the rows whose target is a class, ``0 <= target < C``; rows
    with ``target < 0`` (unlabelled) or ``target >= C`` (no such class, which
    :class:`~spt_probe.OnlineProbe` reports at the end of the epoch) contribute nothing.

    The mask is applied arithmetically, without indexing by it, so no host synchronisation
    happens. When no row is labelled the loss is 0 (and so is its gradient).

    Args:
        logits: ``(N, C)`` unnormalised class scores.
        target: ``(N,)`` integer class indices; values outside ``[0, C)`` are ignored.

    Returns:
        A scalar tensor in ``logits``' dtype.

    Raises:
        ValueError: If ``logits`` is not 2-D or ``target`` is not a 1-D tensor of N rows.

    Example:
        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [5.0, -5.0]])
        >>> masked_cross_entropy(logits, torch.tensor([0, 1, -1]))
        tensor(0.1269)
        >>> masked_cross_entropy(logits, torch.tensor([0, 1, 7]))
        tensor(0.1269)
        >>> F.cross_entropy(logits[:2], torch.tensor([0, 1]))
        tensor(0.1269)
    """
    if logits.ndim != 2 or target.ndim != 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(
            f"masked_cross_entropy needs logits (N, C) and target (N,), got "
            f"{tuple(logits.shape)} and {tuple(target.shape)}"
        )
    labelled = (target >= 0) & (target < logits.shape[1])
    per_row = F.cross_entropy(logits, target.clamp(0, logits.shape[1] - 1).long(), reduction="none")
    count = labelled.sum().clamp(min=1)
    return torch.where(labelled, per_row, torch.zeros_like(per_row)).sum() / count
