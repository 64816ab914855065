"""What the probe's targets are, and whether a loss can take them."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["PROBE_OUTPUT", "check_targets", "ignore_index_of", "is_class_labels"]

#: How label-range errors name what sets the number of classes: the probe's output size.
PROBE_OUTPUT = "the probe's output"


def is_class_labels(target: Tensor) -> bool:
    """Whether ``target`` holds one integer class index per row (unlabelled rows: ``< 0``).

    Args:
        target: A batch's targets.

    Returns:
        ``True`` for a 1-D integer tensor (bools excluded), from its dtype and shape alone.

    Example:
        >>> is_class_labels(torch.tensor([0, 2, -1])), is_class_labels(torch.zeros(3))
        (True, False)
    """
    return _is_integer(target) and target.dim() == 1


def ignore_index_of(loss_fn: Any) -> int | None:
    """The integer ``ignore_index`` of a loss (``nn.CrossEntropyLoss``, ``nn.NLLLoss``), else
    ``None``.

    Example:
        >>> ignore_index_of(torch.nn.CrossEntropyLoss()), ignore_index_of(torch.nn.MSELoss())
        (-100, None)
    """
    ignore = getattr(loss_fn, "ignore_index", None)
    return ignore if isinstance(ignore, int) and not isinstance(ignore, bool) else None


def check_targets(
    target: Any,
    rows: int,
    *,
    default_loss: bool = True,
    name: str = "target",
    rows_of: str = "the features",
) -> Tensor:
    """Check that ``target`` can train a probe on ``rows`` rows (shapes and dtypes only: no
    host sync).

    Args:
        target: The batch's targets.
        rows: How many rows the features have.
        default_loss: Whether the loss is the default cross-entropy, which takes one integer
            class index per row.
        name: How messages call ``target``.
        rows_of: How messages call the features.

    Returns:
        ``target``, now known to be a tensor.

    Raises:
        TypeError: If ``target`` is not a tensor, or holds no integers for the default loss.
        ValueError: If it has no entry per row, or more than one for the default loss.

    Example:
        >>> check_targets(torch.tensor([0, 1]), rows=2)
        tensor([0, 1])
        >>> check_targets(torch.tensor([0.5, 1.0]), rows=2)
        Traceback (most recent call last):
        ...
        TypeError: target holds torch.float32 values, but the default loss ... targets
    """
    if not isinstance(target, Tensor):
        items = {type(item).__name__ for item in target} if isinstance(target, list) else ()
        hint = (
            "; class names must be mapped to integer class indices first" if "str" in items else ""
        )
        raise TypeError(f"{name} holds a {type(target).__name__}, not a tensor{hint}")
    if target.dim() == 0 or target.shape[0] != rows:
        raise ValueError(
            f"{name} has shape {tuple(target.shape)}, but {rows_of} has {rows} rows; the "
            "targets need one entry per row, first"
        )
    if not default_loss:
        return target
    if not _is_integer(target):
        raise TypeError(
            f"{name} holds {target.dtype} values, but the default loss (cross-entropy) takes "
            "integer class indices (cast them with .long()); pass a loss_fn for regression, "
            "soft or multi-label targets"
        )
    if target.dim() != 1:
        raise ValueError(
            f"{name} has shape {tuple(target.shape)}, but the default loss (cross-entropy) "
            "takes one class index per row, shape (rows,); pass a loss_fn for other targets"
        )
    return target


def _is_integer(target: Tensor) -> bool:
    return not (target.is_floating_point() or target.is_complex() or target.dtype == torch.bool)
