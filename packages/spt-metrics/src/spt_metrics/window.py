"""What one stage collects for metric functions between two computations."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class Window:
    """The batches one (stage, dataloader) collected since its metrics were last computed.

    Per-step mode keeps, per metric, the sum of ``batch_size * value`` and the sum of batch
    sizes; exact mode keeps the rows of every needed output. torchmetrics objects keep their
    own state and only count in :attr:`batches`.

    Example:
        >>> window = Window()
        >>> window.add_value("acc", 1.0, weight=3)
        >>> window.add_value("acc", 0.0, weight=1)
        >>> window.sums["acc"]
        [3.0, 4.0]
        >>> window.add_rows(0, torch.tensor([1, 2])); window.add_rows(0, torch.tensor([3]))
        >>> window.concatenated(0)
        tensor([1, 2, 3])
    """

    def __init__(self) -> None:
        self.batches = 0
        self.sums: dict[str, list[float]] = {}
        self.rows: dict[int, list[Tensor]] = {}

    def add_value(self, name: str, value: float, weight: float) -> None:
        """Add one batch's value of metric ``name``, weighted by the batch size."""
        total = self.sums.setdefault(name, [0.0, 0.0])
        total[0] += weight * value
        total[1] += weight

    def add_rows(self, position: int, rows: Tensor) -> None:
        """Keep one batch's rows of the output at ``position`` in the source list."""
        self.rows.setdefault(position, []).append(rows)

    def concatenated(self, position: int) -> Tensor | None:
        """Every kept row of one output, ``None`` if there is none."""
        chunks = self.rows.get(position)
        if not chunks:
            return None
        if len(chunks) > 1:
            self.rows[position] = chunks = [torch.cat(chunks)]
        return chunks[0]

    def clear(self) -> None:
        """Forget everything: the next batch opens a new window."""
        self.batches = 0
        self.sums.clear()
        self.rows.clear()

    def state_dict(self) -> dict[str, Any]:
        """The window on the CPU, for a checkpoint."""
        rows = {}
        for position in self.rows:
            joined = self.concatenated(position)
            if joined is not None:
                rows[position] = joined.cpu()
        return {
            "batches": self.batches,
            "sums": {name: list(total) for name, total in self.sums.items()},
            "rows": rows,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.batches = int(state["batches"])
        self.sums = {name: [float(x) for x in total] for name, total in state["sums"].items()}
        self.rows = {int(position): [rows] for position, rows in state["rows"].items()}
