"""The metric copies of ``OnlineKNN``: one set per bank and ``(k, temperature)`` pair."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from spt_core import StageMetrics
from spt_core.checks import check_label_range
from spt_knn._epoch import EvalEpoch, Loader
from spt_knn.sweep import Pair, Sweep

QUEUE, CLEAN = "", "clean"
"""The banks a validation batch is scored against: the training queue's and the clean one."""


class Boards:
    """Independent metric copies for every bank and every pair of a sweep, each a
    :class:`spt_core.StageMetrics` (with its own copies per stage and loader).

    Logged names: ``eval/{name}_{metric}`` for the queue bank and ``eval/{name}_clean_{metric}``
    for the clean one, each followed by the pair's :meth:`Sweep.suffix`.
    """

    def __init__(self, metrics: dict[str, Any], sweep: Sweep, banks: tuple[str, ...]) -> None:
        self.prototypes = metrics
        self.sweep = sweep
        self.banks = banks
        self.boards = {
            (bank, pair): StageMetrics(metrics) for bank in banks for pair in sweep.pairs
        }
        self.exposed: dict[str, dict[str, Any]] = {}
        """Every live copy, for ``callbacks_metrics``: ``"{stage}/{idx}"`` for the queue bank
        of a scalar ``(k, T)`` (as before sweeps), ``"{stage}/{idx}/{tag}"`` otherwise."""

    def __bool__(self) -> bool:
        return bool(self.prototypes)

    def tag(self, bank: str, pair: Pair) -> str:
        """The bank and the pair, as they show in names: ``""``, ``"clean"``, ``"k10_t0.1"``,
        ``"clean_k10"``..."""
        return (bank + self.sweep.suffix(pair)).lstrip("_")

    def logged_name(self, name: str, bank: str, pair: Pair, key: str) -> str:
        """``eval/{name}_{bank_}{metric}{suffix}``, then Lightning's loader suffix if ``key``
        (a name from :meth:`spt_core.StageMetrics.compute_and_reset`) has one."""
        metric, _, loader = key.partition("/")
        prefix = f"{bank}_" if bank else ""
        return f"eval/{name}_{prefix}{metric}{self.sweep.suffix(pair)}" + (
            f"/{loader}" if loader else ""
        )

    def record(
        self,
        epoch: EvalEpoch,
        bank: str,
        loader: Loader,
        scores: dict[Pair, Tensor],
        targets: Tensor,
        device: torch.device,
        where: str,
    ) -> None:
        """Update the copies of every pair of ``bank`` (on ``device``, created and exposed at
        the first batch of a loader in the epoch) with the scores of a batch.

        Raises:
            ValueError: If a metric refuses the batch because a label of ``where`` is
                ``>= num_classes`` (a host sync on the way out); any other refusal as is.
        """
        if not self.prototypes or targets.shape[0] == 0:  # some metrics fail on no rows
            return
        if loader not in epoch.metrics_on_device:
            for key, board in self.boards.items():
                board.get(*loader, device)
                tag = self.tag(*key)
                for name, live in board.all_live().items():
                    self.exposed[f"{name}/{tag}" if tag else name] = live
            epoch.metrics_on_device.add(loader)
        try:
            for pair, pair_scores in scores.items():
                self.boards[bank, pair].update_labelled(*loader, pair_scores, targets)
        except (RuntimeError, ValueError, IndexError):
            top = int(targets.max()) if targets.numel() else -1
            check_label_range(top, epoch.bank.num_classes, where)
            raise

    def compute_and_reset(
        self, name: str, stage: str, loaders: int, device: torch.device, skip: set[int]
    ) -> dict[str, Tensor]:
        """``{logged name: value}`` of every board (one small collective each, in a fixed
        order: every rank calls together)."""
        results = {}
        for (bank, pair), board in self.boards.items():
            for key, value in board.compute_and_reset(stage, loaders, device, skip=skip).items():
                results[self.logged_name(name, bank, pair, key)] = value
        return results
