"""Argument checks of the probe functions: types and shapes only, as they run on every batch
(nothing here waits for the device)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["check_finite", "check_loss_fn", "check_probe", "check_tensors", "same_rows"]


def check_tensors(owner: str, **tensors: Any) -> None:
    """Raise a ``TypeError`` naming the first argument of ``tensors`` that is not a tensor, or
    a ``ValueError`` for a 0-d one (every argument holds rows first)."""
    for argument, value in tensors.items():
        if not isinstance(value, Tensor):
            raise TypeError(
                f"{owner}: {argument} must be a torch.Tensor, got {type(value).__name__}"
            )
        if value.dim() == 0:
            raise ValueError(f"{owner}: {argument} must hold rows first, got a 0-d tensor")


def check_probe(owner: str, probe: Any) -> None:
    """Raise a ``TypeError`` unless ``probe`` is an ``nn.Module``.

    Example:
        >>> check_probe("probe_step", len)
        Traceback (most recent call last):
        ...
        TypeError: probe_step: probe must be an nn.Module, got builtin_function_or_method
    """
    if not isinstance(probe, nn.Module):
        raise TypeError(f"{owner}: probe must be an nn.Module, got {type(probe).__name__}")


def check_loss_fn(owner: str, loss_fn: Any) -> None:
    """Raise a ``TypeError`` unless ``loss_fn`` is callable or ``None``."""
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(
            f"{owner}: loss_fn must be callable(logits, target) or None, got {loss_fn!r}"
        )


def check_finite(owner: str, finite: Any, rows: int) -> None:
    """Raise unless ``finite`` is ``None`` or a bool tensor of shape ``(rows,)``.

    Example:
        >>> check_finite("probe_loss", torch.ones(3, dtype=torch.bool), rows=2)
        Traceback (most recent call last):
        ...
        ValueError: probe_loss: finite must have shape (2,), one bool per row, got (3,)
    """
    if finite is None:
        return
    if not isinstance(finite, Tensor) or finite.dtype != torch.bool:
        raise TypeError(f"{owner}: finite must be a bool tensor or None, got {finite!r}")
    if finite.shape != (rows,):
        raise ValueError(
            f"{owner}: finite must have shape ({rows},), one bool per row, got "
            f"{tuple(finite.shape)}"
        )


def same_rows(owner: str, rows: tuple[str, Tensor], other: tuple[str, Tensor]) -> None:
    """Raise a ``ValueError`` unless both named tensors hold as many rows."""
    (name, tensor), (other_name, other_tensor) = rows, other
    if tensor.shape[0] != other_tensor.shape[0]:
        raise ValueError(
            f"{owner}: {other_name} must have one entry per row of {name}, got "
            f"{tuple(other_tensor.shape)} for {name} {tuple(tensor.shape)}"
        )
