"""What one evaluation epoch of ``OnlineKNN`` holds, from its start to its end."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from lightning.pytorch import Trainer
from torch import Tensor

from spt_core import distributed
from spt_knn.bank import KNNBank
from spt_knn.sharded import agree_on_rounds
from spt_knn.sweep import Pair

Loader = tuple[str, int]
"""A stage (``"val"``, ``"test"``) and a dataloader index."""


@dataclass
class EvalEpoch:
    """The bank of an evaluation epoch and, in shard mode under DDP, the rounds of each loader.

    ``sharded``: the bank is this rank's shard, searched in collective rounds. ``deferred``:
    sharded, and the ranks' batch counts differ (or are unknown): the rows are kept and scored
    together at the end of the epoch.
    """

    bank: KNNBank
    sharded: bool = False
    deferred: bool = False
    loader_banks: dict[Loader, KNNBank] = field(default_factory=dict)
    metrics_on_device: set[Loader] = field(default_factory=set)
    kept: dict[Loader, list[tuple[Tensor, Tensor]]] = field(default_factory=dict)

    def bank_for(self, loader: Loader, queries: Tensor, owner: str) -> KNNBank:
        """The bank to score a batch of ``loader`` against: in shard mode the first batch of
        each loader settles its rounds (one small collective and one host sync).

        Raises:
            ValueError: If a later batch is larger than the largest first batch over the
                ranks (the rows that every rank sends per round).
        """
        if not self.sharded:
            return self.bank
        bank = self.loader_banks.get(loader)
        if bank is None:
            bank = self.bank.in_rounds(agree_on_rounds(queries, len(queries), queries.device))
            self.loader_banks[loader] = bank
        if len(queries) > bank.rounds.rows:
            raise ValueError(
                f"{owner}: a batch of {len(queries)} rows exceeds the {bank.rounds.rows} rows "
                "of the largest first batch of this loader over the ranks; in shard mode no "
                "later batch may be larger"
            )
        return bank

    def keep(self, loader: Loader, queries: Tensor, targets: Tensor) -> None:
        """Keep a batch for the end of the epoch (deferred shard mode)."""
        self.kept.setdefault(loader, []).append((queries, targets))

    def score_kept(
        self, stage: str, loaders: int, device: torch.device, predict: Callable
    ) -> Iterator[tuple[Loader, Tensor, dict[Pair, Tensor]]]:
        """Deferred shard mode: score the kept rows of every loader of ``stage`` with
        ``predict(queries, bank) -> {pair: scores}`` in collective rounds (every rank must
        consume the whole iterator), yielding ``(loader, targets, scores)`` per kept batch."""
        for idx in range(loaders):
            rounds = self.deferred_rounds((stage, idx), device)
            parts = [predict(part, rounds.bank) for part in rounds.parts]
            if not rounds.batches:  # this rank sent no row
                continue
            joined = {pair: torch.cat([part[pair] for part in parts]) for pair in parts[0]}
            for targets, scores in rounds.split_pairs(joined):
                yield (stage, idx), targets, scores

    def deferred_rounds(self, loader: Loader, device: torch.device) -> DeferredRounds:
        """The kept rows of ``loader``, cut into the rounds every rank runs together (one
        small collective and one host sync; every rank calls it for every loader)."""
        kept = self.kept.pop(loader, [])
        queries = torch.cat([q for q, _ in kept]) if kept else None
        rows = max((len(q) for q, _ in kept), default=0)
        shape = agree_on_rounds(queries, rows, device)
        return DeferredRounds(self.bank.in_rounds(shape), shape.parts(queries, device), kept)


@dataclass(frozen=True)
class DeferredRounds:
    """The sharded bank, the query parts of each round, and the kept batches they came from."""

    bank: KNNBank
    parts: list[Tensor]
    batches: list[tuple[Tensor, Tensor]]

    def split_pairs(self, scores: dict[Pair, Tensor]) -> list[tuple[Tensor, dict[Pair, Tensor]]]:
        """``(targets, {pair: scores})`` of each kept batch, from every pair's scores of all
        the rounds."""
        sizes = [len(q) for q, _ in self.batches]
        pieces = {pair: values.split(sizes) for pair, values in scores.items()}
        return [
            (targets, {pair: parts[i] for pair, parts in pieces.items()})
            for i, (_, targets) in enumerate(self.batches)
        ]


def batch_counts(trainer: Trainer, stage: str) -> list[int | float]:
    """The batches of each loader this rank runs in this evaluation (``inf``: unknown)."""
    if stage == "test":
        return trainer.num_test_batches
    return trainer.num_sanity_val_batches if trainer.sanity_checking else trainer.num_val_batches


def uneven_batches(trainer: Trainer, stage: str, device: torch.device) -> list[list[int]]:
    """Every rank's batch counts per loader (``-1``: unknown) if they differ or one is
    unknown, else ``[]`` (one small collective and one host sync; every rank calls it)."""
    counts = [int(n) if math.isfinite(n) else -1 for n in batch_counts(trainer, stage)]
    mine = torch.tensor([counts], dtype=torch.long, device=device)
    per_rank = distributed.gather_uneven(mine).tolist()
    same = all(r == per_rank[0] and -1 not in r for r in per_rank)
    return [] if same else per_rank
