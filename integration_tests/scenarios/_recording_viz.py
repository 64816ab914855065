"""A LatentViz that keeps this rank's ``(epoch, loss)`` of every update, for the scenarios
that compare losses between ranks or runs."""

from __future__ import annotations

from typing import Any

from spt_latentviz import LatentViz


class RecordingViz(LatentViz):
    """Keeps this rank's ``(epoch, loss)`` of every update."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.losses: list[tuple[int, float]] = []

    def update_projection(self, trainer, pl_module):
        loss = super().update_projection(trainer, pl_module)
        if loss is not None:
            self.losses.append((trainer.current_epoch, loss.item()))
        return loss
