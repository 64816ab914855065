"""Which batches of a loader this rank embeds: ``rank, rank + W, ...``, every row once."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from torch.utils.data import DataLoader, IterableDataset, SequentialSampler

from spt_core import distributed


def this_rank_batches(
    loader: Iterable[Any], owner: str, count: Callable[[Any], int] | None
) -> Iterator[tuple[int, int, Any]]:
    """``(batch_idx, skipped, batch)`` for batches ``rank, rank + W, ...`` of ``loader``, where
    ``skipped`` is the number of rows in the other ranks' batches since this rank's previous
    one (counted by ``count(batch)``; 0 without ``count`` when they must be read)."""
    world, rank = distributed.world_size(), distributed.rank()
    if world == 1:
        yield from ((batch_idx, 0, batch) for batch_idx, batch in enumerate(loader))
        return
    _check_splittable(loader, world, owner)
    if (
        type(loader) is DataLoader
        and loader.batch_sampler is not None
        and not isinstance(loader.dataset, IterableDataset)
    ):
        batches = list(loader.batch_sampler)
        starts = [0, *itertools.accumulate(len(indices) for indices in batches)]
        mine = range(rank, len(batches), world)
        skips = [starts[i] - (starts[i - world + 1] if i >= world else 0) for i in mine]
        yield from zip(mine, skips, _rebuilt(loader, batches[rank::world]), strict=False)
        return
    skipped = 0
    for batch_idx, batch in enumerate(loader):
        if batch_idx % world == rank:
            yield batch_idx, skipped, batch
            skipped = 0
        elif count is not None:
            skipped += count(batch)


def _check_splittable(loader: Iterable[Any], world: int, owner: str) -> None:
    """Refuse a ``DataLoader`` whose order may differ between ranks or that is already sharded.

    Only a ``SequentialSampler`` (directly or under the batch sampler) and an iterable dataset
    (no sampler) give every rank the same batches in the same order."""
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return
    batches = loader.batch_sampler
    sampler = loader.sampler if batches is None else getattr(batches, "sampler", batches)
    if isinstance(sampler, SequentialSampler):
        return
    what = type(sampler).__name__
    raise ValueError(
        f"{owner}: the clean loader's sampler is a {what}, so the {world} ranks would not embed "
        "its rows exactly once (a random sampler draws a different order on each rank, a "
        "DistributedSampler already shards and pads). Pass a plain DataLoader(dataset, "
        "batch_size, shuffle=False): spt splits it over the ranks itself, without the "
        "DistributedSampler's padding, which would put duplicate rows in the bank"
    )


def _rebuilt(loader: DataLoader, mine: list[list[int]]) -> DataLoader:
    """``loader`` over the batches of dataset indices ``mine`` only (same collation, workers)."""
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
