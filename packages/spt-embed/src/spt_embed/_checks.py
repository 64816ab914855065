"""Argument and batch checks of :func:`~spt_embed.embed_loader` and the gathers after it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from spt_core.checks import string_key

INTEGER = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def check_loader_arguments(
    pl_module: Any, loader: Any, input: Any, target: Any, embed: Any, owner: str, with_index: Any
) -> None:
    """Raise naming ``owner`` and the argument of :func:`~spt_embed.embed_loader` that is not
    allowed (a ``TypeError`` for a wrong type, a ``ValueError`` for an empty key)."""
    if not isinstance(pl_module, LightningModule):
        raise TypeError(
            f"{owner}: pl_module must be a LightningModule, got {type(pl_module).__name__}"
        )
    if not isinstance(loader, Iterable):
        raise TypeError(f"{owner}: loader must be an iterable of batches, got {loader!r}")
    string_key(input, f"{owner}: input")
    string_key(target, f"{owner}: target")
    if embed is not None and not callable(embed):
        raise TypeError(f"{owner}: embed must be callable(pl_module, batch) or None, got {embed!r}")
    if not isinstance(with_index, bool):
        raise TypeError(f"{owner}: with_index must be a bool, got {with_index!r}")


def checked_batch(
    features: Any, labels: Any, what: str, target: str, owner: str
) -> tuple[Tensor, Tensor]:
    """One clean batch's ``features`` as ``(B, D)`` floating rows and its ``labels`` as
    ``(B,)`` int64, else an error naming ``owner`` and what is wrong."""
    if not isinstance(features, Tensor):
        raise TypeError(f"{owner}: {what} must be a tensor, got {type(features).__name__}")
    if not isinstance(labels, Tensor):
        raise TypeError(
            f"{owner}: the labels {target!r} must be a tensor, got {type(labels).__name__}"
        )
    if labels.dtype not in INTEGER:
        raise TypeError(
            f"{owner}: the labels {target!r} must be integer class indices, got {labels.dtype}"
        )
    features = features.detach()
    if features.dim() == 0:
        raise ValueError(f"{owner}: {what} must have a batch dimension, got a scalar")
    features = features.reshape(features.shape[0], -1)
    if not features.is_floating_point():
        features = features.float()
    labels = labels.detach().reshape(-1).long()
    if labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"{owner}: a clean batch has {features.shape[0]} feature rows but "
            f"{labels.shape[0]} labels {target!r}"
        )
    return features, labels


def two_dimensional(value: Any, argument: str) -> Tensor:
    """``value`` if it is a 2-D tensor, else a ``TypeError`` or ``ValueError`` naming it.

    Example:
        >>> two_dimensional(torch.zeros(3), "features")
        Traceback (most recent call last):
        ...
        ValueError: features must be a 2-D tensor (rows, features), got shape (3,)
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"{argument} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != 2:
        raise ValueError(
            f"{argument} must be a 2-D tensor (rows, features), got shape {tuple(value.shape)}"
        )
    return value


def check_gathered(features: Any, labels: Any, index: Any) -> None:
    """The arguments of :func:`~spt_embed.gather_in_loader_order`: ``(N, D)`` features and
    ``(N,)`` integer labels and positions (types and shapes only: no host sync)."""
    owner = "gather_in_loader_order"
    rows = two_dimensional(features, f"{owner}: features").shape[0]
    for argument, value in (("labels", labels), ("index", index)):
        if not isinstance(value, Tensor) or value.dtype not in INTEGER:
            raise TypeError(f"{owner}: {argument} must be an integer tensor, got {value!r}")
        if value.shape != (rows,):
            raise ValueError(
                f"{owner}: {argument} must have shape ({rows},), one per row of features, got "
                f"{tuple(value.shape)}"
            )
