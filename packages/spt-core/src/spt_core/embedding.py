"""Embed a labelled loader with the model in eval mode: the clean features of a dataset."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, RandomSampler

from spt_core import distributed
from spt_core.keys import lookup

__all__ = ["embed_loader"]

_INTEGER = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
_SILENCED = ("log", "log_dict")


def embed_loader(
    pl_module: LightningModule,
    loader: Iterable[Any],
    *,
    input: str,
    target: str,
    embed: Callable[[LightningModule, Any], Tensor] | None = None,
    owner: str,
) -> tuple[Tensor, Tensor]:
    """Embed this rank's share of ``loader`` with every submodule in eval mode, no gradients.

    Each batch is moved to ``pl_module.device`` (through the Trainer's strategy when one is
    attached, so ``on_before_batch_transfer``/``on_after_batch_transfer`` run), then embedded
    by ``embed(pl_module, batch)`` or, without ``embed``, by ``pl_module.validation_step(batch,
    batch_idx)`` whose outputs are searched for ``input`` before the batch (as
    :func:`spt_core.lookup` does); the labels are ``target``, looked up the same way.

    While embedding, every submodule is in eval mode under ``torch.no_grad()``; afterwards each
    submodule's ``training`` flag and each parameter's ``requires_grad`` are what they were, and
    no ``.grad`` changes. The global random streams (the CPU's and the module's device's) are
    forked, so iterating the loader (a ``DataLoader`` draws a seed) or a random
    ``validation_step`` leaves the training's random numbers as they were.

    ``self.log``/``self.log_dict`` calls made by ``validation_step`` are dropped: for the
    duration of the call the module's ``log`` and ``log_dict`` are replaced by no-ops on the
    instance and removed again afterwards, so nothing reaches the Trainer's logged metrics (and
    no ``sync_dist`` collective runs). Other side effects of ``validation_step`` (updating the
    module's own metrics, say) are not undone: pass ``embed`` to avoid them.

    Distributed rule: with ``W`` processes, rank ``r`` embeds batches ``r, r + W, r + 2W, ...``
    of the loader, so together the ranks embed every row exactly once (no padding). A plain
    ``DataLoader`` over a map-style dataset is rebuilt over this rank's batches only, so no rank
    loads another's rows; any other iterable is read in full and its other batches skipped. The
    loader must yield the same batches in the same order on every rank: a shuffling loader is
    refused under DDP. Nothing here communicates.

    Args:
        pl_module: The model; it is not trained or changed.
        loader: Labelled batches (a ``DataLoader`` or any iterable).
        input: Key of the features in ``validation_step``'s outputs or in the batch (unused
            with ``embed``).
        target: Key of the integer labels in the outputs or in the batch.
        embed: ``embed(pl_module, batch) -> features``, used instead of ``validation_step``.
        owner: Who asks (a callback's ``state_key``), for error messages.

    Returns:
        ``(features, labels)`` of this rank's rows on ``pl_module.device``: features of shape
        ``(N, D)`` (each row flattened; a floating dtype is kept, others become float32) and
        int64 labels of shape ``(N,)``. With no batch for this rank, features are ``(0, 0)``:
        the width is unknown, so a caller that gathers rows agrees on it first.

    Raises:
        KeyError: If ``input`` or ``target`` is in neither the outputs nor the batch.
        TypeError: If the features or labels are not tensors, or the labels not integers.
        ValueError: If a batch has a different number of labels than feature rows, the
            features' width changes between batches, or a shuffling loader is used under DDP.

    Example:
        >>> from spt_core.testing import Backbone, DictDataset
        >>> data = DictDataset(x=torch.arange(6.0).reshape(3, 2), label=torch.tensor([0, 1, 0]))
        >>> features, labels = embed_loader(
        ...     Backbone(dim=2), DataLoader(data, batch_size=2),
        ...     input="embedding", target="label", owner="demo")
        >>> features.tolist(), labels.tolist()
        ([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]], [0, 1, 0])
    """
    device = pl_module.device
    rows: list[Tensor] = []
    labels: list[Tensor] = []
    with _clean_mode(pl_module, device), torch.no_grad():
        for batch_idx, batch in _this_rank_batches(loader, owner):
            batch = _to_device(pl_module, batch, device)
            if embed is not None:
                outputs, features = None, embed(pl_module, batch)
                what = "embed(pl_module, batch)"
            else:
                outputs = pl_module.validation_step(batch, batch_idx)
                features = lookup(input, outputs, batch, owner=owner)
                what = f"the features {input!r}"
            found = lookup(target, outputs, batch, owner=owner)
            features, found = _checked(features, found, what, target, owner)
            if rows and features.shape[1] != rows[0].shape[1]:
                raise ValueError(
                    f"{owner}: {what} changed width between batches of the clean loader, "
                    f"{rows[0].shape[1]} then {features.shape[1]}"
                )
            rows.append(features.to(device))
            labels.append(found.to(device))
    if not rows:
        return torch.empty((0, 0), device=device), torch.empty(0, dtype=torch.long, device=device)
    return torch.cat(rows), torch.cat(labels)


def _checked(
    features: Any, labels: Any, what: str, target: str, owner: str
) -> tuple[Tensor, Tensor]:
    if not isinstance(features, Tensor):
        raise TypeError(f"{owner}: {what} must be a tensor, got {type(features).__name__}")
    if not isinstance(labels, Tensor):
        raise TypeError(
            f"{owner}: the labels {target!r} must be a tensor, got {type(labels).__name__}"
        )
    if labels.dtype not in _INTEGER:
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


def _this_rank_batches(loader: Iterable[Any], owner: str) -> Iterator[tuple[int, Any]]:
    """``(batch_idx, batch)`` for batches ``rank, rank + W, ...`` of ``loader``."""
    world, rank = distributed.world_size(), distributed.rank()
    if world == 1:
        yield from enumerate(loader)
        return
    if isinstance(loader, DataLoader) and isinstance(loader.sampler, RandomSampler):
        raise ValueError(
            f"{owner}: the clean loader shuffles (its sampler is a RandomSampler), so the "
            f"{world} ranks would not split its rows: pass a loader with shuffle=False"
        )
    indices = itertools.count(rank, world)
    if (
        type(loader) is DataLoader
        and loader.batch_sampler is not None
        and not isinstance(loader.dataset, IterableDataset)
    ):
        yield from zip(indices, _rebuilt(loader, rank, world), strict=False)
        return
    yield from zip(indices, itertools.islice(loader, rank, None, world), strict=False)


def _rebuilt(loader: DataLoader, rank: int, world: int) -> DataLoader:
    """``loader`` over its batches ``rank, rank + world, ...`` only (same collation, workers)."""
    mine = list(itertools.islice(loader.batch_sampler, rank, None, world))
    return DataLoader(
        loader.dataset,
        batch_sampler=mine,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator,
        prefetch_factor=loader.prefetch_factor,
        pin_memory_device=loader.pin_memory_device,
        in_order=loader.in_order,
    )


def _to_device(pl_module: LightningModule, batch: Any, device: torch.device) -> Any:
    trainer = pl_module._trainer  # the public property raises when no Trainer is attached
    if trainer is not None:
        return trainer.strategy.batch_to_device(batch, device)
    return pl_module.transfer_batch_to_device(batch, device, 0)


def _ignore(*args: Any, **kwargs: Any) -> None:
    """Stands in for ``LightningModule.log`` while embedding."""


@contextmanager
def _clean_mode(pl_module: LightningModule, device: torch.device) -> Iterator[None]:
    """Eval mode, silenced ``log`` and forked random streams; restores every mode,
    ``requires_grad``, ``log`` and the random streams."""
    modes = [(module, module.training) for module in pl_module.modules()]
    flags = [(parameter, parameter.requires_grad) for parameter in pl_module.parameters()]
    shadowed = {name: pl_module.__dict__[name] for name in _SILENCED if name in pl_module.__dict__}
    accelerated = [device] if device.type != "cpu" else []
    try:
        pl_module.eval()
        for name in _SILENCED:
            object.__setattr__(pl_module, name, _ignore)
        with torch.random.fork_rng(devices=accelerated, device_type=device.type):
            yield
    finally:
        for name in _SILENCED:
            pl_module.__dict__.pop(name, None)
        pl_module.__dict__.update(shadowed)
        for module, training in modes:
            module.training = training
        for parameter, requires_grad in flags:
            parameter.requires_grad_(requires_grad)
