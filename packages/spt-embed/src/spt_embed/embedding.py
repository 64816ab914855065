"""Embed a labelled loader with the model in eval mode: the clean features of a dataset."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor

from spt_core import distributed
from spt_core.keys import lookup
from spt_embed._checks import check_gathered, check_loader_arguments, checked_batch, two_dimensional
from spt_embed._clean_mode import clean_mode
from spt_embed._rank_share import this_rank_batches

__all__ = ["agree_features", "embed_loader", "gather_in_loader_order"]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # narrowest first


def embed_loader(
    pl_module: LightningModule,
    loader: Iterable[Any],
    *,
    input: str,
    target: str,
    embed: Callable[[LightningModule, Any], Tensor] | None = None,
    owner: str,
    with_index: bool = False,
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
    """Embed this rank's share of ``loader`` with every submodule in eval mode, no gradients.

    Each batch goes the way Lightning's evaluation loop sends it to ``validation_step``: with a
    Trainer attached, it is converted to the precision's input dtype, passed through
    ``on_before_batch_transfer``, ``transfer_batch_to_device`` and ``on_after_batch_transfer``
    (``dataloader_idx=0``) onto ``pl_module.device``, and embedded inside the precision's
    validation context (autocast for ``*-mixed``, the default dtype for ``*-true``); without a
    Trainer the module's three hooks run and no precision applies. The features are
    ``embed(pl_module, batch)`` or, without ``embed``, ``pl_module.validation_step(batch,
    batch_idx)`` (plus ``dataloader_idx=0`` if the step requires it) whose outputs are searched
    for ``input`` before the batch (as :func:`spt_core.lookup` does); the labels are
    ``target``, looked up the same way.

    While embedding, every submodule is in eval mode under ``torch.no_grad()``; afterwards each
    submodule's ``training`` flag and each parameter's ``requires_grad`` are what they were, and
    no ``.grad`` changes. torch's random generators (the CPU's and that of the module's
    device) are forked, so iterating the loader (a ``DataLoader`` draws a seed) or a random
    ``validation_step`` leaves the training's torch random numbers as they were; Python's
    ``random`` and numpy's generators are not forked.

    Side effects of ``validation_step`` that are undone: its ``self.log``/``self.log_dict``
    calls are dropped (for the duration of the call they are no-ops on the instance, removed
    again afterwards), so nothing reaches the Trainer's logged metrics and no ``sync_dist``
    collective runs; and every torchmetrics ``Metric`` among ``pl_module.modules()`` updates
    copies of its states, its attributes (states, update count, cached ``compute()`` result)
    being put back afterwards, so its ``compute()`` is as if nothing was embedded. Other side
    effects are not undone: a list the step appends to, a counter it increments, a metric
    that is not a submodule (kept in a plain list or dict, say). Pass ``embed`` to avoid them.

    Distributed rule: with ``W`` processes, rank ``r`` embeds batches ``r, r + W, r + 2W, ...``
    of the loader, so together the ranks embed every row exactly once (no padding). A plain
    ``DataLoader`` over a map-style dataset is rebuilt over this rank's batches only, so no rank
    loads another's rows; any other iterable is read in full and its other batches skipped. The
    loader must yield the same batches in the same order on every rank: under DDP a
    ``DataLoader`` over a map-style dataset must sample sequentially (``shuffle=False``, no
    ``sampler``); a random or ``DistributedSampler`` is refused. Nothing here communicates.

    Args:
        pl_module: The model; it is not trained or changed.
        loader: Labelled batches (a ``DataLoader`` or any iterable).
        input: Key of the features in ``validation_step``'s outputs or in the batch (unused
            with ``embed``).
        target: Key of the integer labels in the outputs or in the batch.
        embed: ``embed(pl_module, batch) -> features``, used instead of ``validation_step``.
        owner: Who asks (a callback's ``state_key``), for error messages.
        with_index: Also return each row's position in the whole loader (over every rank's
            batches, one row per label), so rows gathered from the ranks can be put back in
            the loader's order: ``order = gathered_index.argsort()``, then
            ``gathered_features[order]``. Under DDP, a loader other than a ``DataLoader`` over
            a map-style dataset must then carry ``target`` in its batches: the other ranks'
            batches are counted by their labels.

    Returns:
        ``(features, labels)`` of this rank's rows on ``pl_module.device``: features of shape
        ``(N, D)`` (each row flattened; a floating dtype is kept, others become float32) and
        int64 labels of shape ``(N,)``. With no batch for this rank, features are ``(0, 0)``:
        the width is unknown, so a caller that gathers rows agrees on it first. With
        ``with_index``, a third tensor: the int64 positions ``(N,)`` of these rows in the
        loader (``arange(N)`` on one process).

    Raises:
        KeyError: If ``input`` or ``target`` is in neither the outputs nor the batch (with
            ``with_index`` under DDP, ``target`` not in another rank's batch of an iterable).
        TypeError: If ``loader`` is not iterable, ``input``/``target`` not a string, ``embed``
            not callable, ``with_index`` not a bool, the features or labels not tensors, or
            the labels not integers (messages name ``owner`` and the argument).
        ValueError: If ``input``/``target`` is empty, a batch has a different number of
            labels than feature rows, the
            features' width changes between batches, or, under DDP, a ``DataLoader``'s sampler
            is not a ``SequentialSampler``.

    Example:
        >>> from torch.utils.data import DataLoader
        >>> from spt_core.testing import Backbone, DictDataset
        >>> data = DictDataset(x=torch.arange(6.0).reshape(3, 2), label=torch.tensor([0, 1, 0]))
        >>> features, labels = embed_loader(
        ...     Backbone(dim=2), DataLoader(data, batch_size=2),
        ...     input="embedding", target="label", owner="demo")
        >>> features.tolist(), labels.tolist()
        ([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]], [0, 1, 0])
    """
    check_loader_arguments(pl_module, loader, input, target, embed, owner, with_index)
    device = pl_module.device
    trainer = pl_module._trainer  # the public property raises when no Trainer is attached
    step_kwargs = _step_kwargs(pl_module)
    rows: list[Tensor] = []
    labels: list[Tensor] = []
    positions: list[Tensor] = []
    seen = 0  # rows of the loader before the next batch, every rank's
    count = (lambda batch: _rows(lookup(target, None, batch, owner=owner))) if with_index else None
    with clean_mode(pl_module, device), torch.no_grad():
        for batch_idx, skipped, batch in this_rank_batches(loader, owner, count):
            batch = _to_device(pl_module, trainer, batch, device)
            with _step_context(trainer):
                if embed is not None:
                    outputs, features = None, embed(pl_module, batch)
                    what = "embed(pl_module, batch)"
                else:
                    outputs = pl_module.validation_step(batch, batch_idx, **step_kwargs)
                    features = lookup(input, outputs, batch, owner=owner)
                    what = f"the features {input!r}"
            found = lookup(target, outputs, batch, owner=owner)
            features, found = checked_batch(features, found, what, target, owner)
            if rows and features.shape[1] != rows[0].shape[1]:
                raise ValueError(
                    f"{owner}: {what} changed width between batches of the clean loader, "
                    f"{rows[0].shape[1]} then {features.shape[1]}"
                )
            rows.append(features.to(device))
            labels.append(found.to(device))
            if with_index:
                seen += skipped
                positions.append(torch.arange(seen, seen + len(found), device=device))
                seen += len(found)
    if not rows:
        empty = torch.empty(0, dtype=torch.long, device=device)
        return (torch.empty((0, 0), device=device), empty) + ((empty,) if with_index else ())
    embedded = (torch.cat(rows), torch.cat(labels))
    return embedded + ((torch.cat(positions),) if with_index else ())


def agree_features(features: Tensor) -> Tensor:
    """This rank's ``features`` in the width and dtype every rank agrees on, for a collective.

    A rank without a batch gets ``(0, 0)`` features from :func:`embed_loader`; it takes the
    width of the others, and every rank the widest floating dtype of a rank with rows. Every
    rank calls it together: one small collective and one host sync (none on one process).

    Args:
        features: ``(N, D)`` this rank's rows, as :func:`embed_loader` returns them (``N``
            may be 0).

    Returns:
        ``(N, D_agreed)`` in the agreed dtype (a non-floating dtype counts as float32); on
        one process, ``features`` itself.

    Raises:
        TypeError: If ``features`` is not a tensor.
        ValueError: If it is not 2-D.

    Example:
        >>> agree_features(torch.ones(2, 3)).shape
        torch.Size([2, 3])
    """
    two_dimensional(features, "agree_features: features")
    if not distributed.is_distributed():
        return features
    dtype = features.dtype if features.dtype in _FLOATS else torch.float32
    code = _FLOATS.index(dtype) if len(features) else -1
    agreed = torch.tensor([features.shape[1], code], device=features.device)
    width, code = distributed.all_reduce_max_(agreed).tolist()
    if not len(features):
        features = features.new_zeros((0, width))
    return features.to(_FLOATS[code] if code >= 0 else features.dtype)


def gather_in_loader_order(
    features: Tensor, labels: Tensor, index: Tensor
) -> tuple[Tensor, Tensor]:
    """Every rank's rows, on every rank, in the order of the loader they were embedded from.

    Takes what :func:`embed_loader` returns with ``with_index=True``:
    ``gather_in_loader_order(*embed_loader(..., with_index=True))``. Gathering rank by rank
    would put rank 0's batches ``0, W, 2W, ...`` first; in the loader's order, what follows
    (a seeded shuffle, neighbours at equal distance) sees the rows one process would see.
    The ranks first agree on the features' width and dtype (:func:`agree_features`), so a
    rank without a batch takes part. Every rank calls it together: that agreement, then two
    uneven gathers (positions with labels, then features).

    Args:
        features: ``(N, D)`` this rank's rows (``N`` may be 0).
        labels: ``(N,)`` their integer labels.
        index: ``(N,)`` each row's position in the whole loader.

    Returns:
        ``(features, labels)`` of every rank; on one process, the inputs themselves.

    Raises:
        TypeError: If an argument is not a tensor, or ``labels`` or ``index`` not integers.
        ValueError: If ``features`` is not 2-D, or ``labels`` and ``index`` are not one per
            row, shape ``(N,)``.

    Example:
        >>> features, labels = torch.tensor([[5.0], [6.0]]), torch.tensor([1, 0])
        >>> gather_in_loader_order(features, labels, torch.arange(2))[1].tolist()
        [1, 0]
    """
    check_gathered(features, labels, index)
    if not distributed.is_distributed():
        return features, labels
    features = agree_features(features)
    positions, labels = distributed.gather_uneven(torch.stack((index, labels), dim=1)).T
    order = positions.argsort()
    return distributed.gather_uneven(features)[order], labels[order]


def _rows(labels: Any) -> int:
    """The number of labels (rows) in a batch another rank embeds."""
    return labels.numel() if isinstance(labels, Tensor) else len(labels)


def _step_kwargs(pl_module: LightningModule) -> dict[str, int]:
    """``{"dataloader_idx": 0}`` when ``validation_step`` requires that argument, else ``{}``
    (Lightning passes it only with several validation loaders)."""
    parameter = inspect.signature(pl_module.validation_step).parameters.get("dataloader_idx")
    if parameter is not None and parameter.default is inspect.Parameter.empty:
        return {"dataloader_idx": 0}
    return {}


def _to_device(
    pl_module: LightningModule, trainer: Trainer | None, batch: Any, device: torch.device
) -> Any:
    """The batch as Lightning's evaluation loop feeds it to a step: in the precision's input
    dtype, through ``on_before_batch_transfer``, ``transfer_batch_to_device`` and
    ``on_after_batch_transfer``."""
    if trainer is not None:
        batch = trainer.precision_plugin.convert_input(batch)
        batch = pl_module._on_before_batch_transfer(batch, dataloader_idx=0)
        return trainer.strategy.batch_to_device(batch, device, dataloader_idx=0)
    batch = pl_module._on_before_batch_transfer(batch, dataloader_idx=0)
    return pl_module._apply_batch_transfer_handler(batch, device, dataloader_idx=0)


def _step_context(trainer: Trainer | None) -> AbstractContextManager[None]:
    """The Trainer's precision (autocast, default dtype) for a validation step."""
    return trainer.precision_plugin.val_step_context() if trainer is not None else nullcontext()
