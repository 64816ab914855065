"""The metric copies of an :class:`~spt_probe.OnlineProbe` and the data checks that gate them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor

from spt_core import DataChecks, SPTCallback, StageMetrics, callbacks_metrics
from spt_core.checks import check_label_range
from spt_probe._targets import PROBE_OUTPUT
from spt_probe.functional import is_class_labels

__all__ = ["WHERE", "ProbeMetrics", "loaders_of"]

WHERE = {"train": "training", "val": "validation", "test": "test"}  # for messages


class ProbeMetrics:
    """Per stage and loader: metric copies, and checks of the rows they see.

    Each batch is checked on the device (rows with a non-finite feature, the largest label)
    and, with class labels, only its labelled rows reach the metrics. At the end of an epoch
    :meth:`read_checks` raises for a label without an output of the probe and warns once for
    each loader that had a non-finite feature; :meth:`compute` leaves those loaders out.

    Args:
        metrics: ``{name: metric}`` prototypes.
        owner: The probe (its ``state_key``, ``name`` and once-per-epoch messages).
        input: The key of the features, for messages.
        target: The key of the targets, for messages.
    """

    def __init__(
        self, metrics: Mapping[str, Any], owner: SPTCallback, input: str, target: str
    ) -> None:
        self.stages = StageMetrics(metrics)
        self._checks = DataChecks()
        self._owner, self._input, self._target = owner, input, target

    def __bool__(self) -> bool:
        return bool(self.stages)

    def targets_named(self, stage: str) -> str:
        """How messages call the targets of a ``stage`` batch."""
        return f"{self._owner.state_key}: a {WHERE[stage]} batch of '{self._target}'"

    def expose(self, pl_module: LightningModule, stage: str, loaders: int) -> None:
        """Create ``stage``'s copies on the module's device, and show every live copy at
        ``pl_module.callbacks_metrics[name]``."""
        for idx in range(loaders):
            self.stages.get(stage, idx, pl_module.device)
        callbacks_metrics(pl_module)[self._owner.name] = self.stages.all_live()

    def check(self, stage: str, idx: int, features: Tensor, target: Tensor) -> Tensor:
        """Count a batch's non-finite rows and largest class label; returns which rows are
        finite (no host sync)."""
        labels = target if is_class_labels(target) else target.new_empty(0, dtype=torch.long)
        return self._checks.update(stage, idx, features, labels)

    def update(
        self, stage: str, idx: int, preds: Tensor, target: Tensor, classes: int | None
    ) -> None:
        """Update the copies of ``(stage, idx)``; with class labels, only with labelled rows."""
        labels = is_class_labels(target)
        try:
            if labels:
                self.stages.update_labelled(stage, idx, preds, target)
            else:
                self.stages.update(stage, idx, preds, target)
        except (RuntimeError, ValueError, IndexError):
            # A metric refused the batch: say so if a label is why (a sync on the way out).
            if labels:
                top = int(target.max()) if target.numel() else -1
                self._check_range(top, classes, stage)
            raise

    def _check_range(self, top: int, classes: int | None, stage: str) -> None:
        check_label_range(top, classes, self.targets_named(stage), classes_from=PROBE_OUTPUT)

    def read_checks(
        self, trainer: Trainer, device: torch.device, stage: str, loaders: int, classes: int | None
    ) -> set[int]:
        """Raise for a label without an output among ``classes``; warn once for each loader
        that had non-finite features, and return those loaders. Every rank calls it together
        (one collective)."""
        skip = set()
        for idx, (count, top) in enumerate(self._checks.read(stage, loaders, device)):
            self._check_range(top, classes, stage)
            if not count:
                continue
            skip.add(idx)
            rows, name = f"{count} {WHERE[stage]} rows of '{self._input}'", self._owner.name
            if stage == "train":
                self._owner.warn_once(
                    trainer,
                    "non-finite-train",
                    f"{rows} had non-finite values: they were zeroed for the probe's training, "
                    f"and train/{name}_* metrics of this epoch are not logged",
                )
            else:
                self._owner.warn_once(
                    trainer,
                    f"non-finite-{stage}-{idx}",
                    f"{rows} (loader {idx}) had non-finite values: the probe cannot score them, "
                    f"so eval/{name}_* is not logged for this loader this epoch",
                )
        return skip

    def train_state(self, synchronise: bool, device: torch.device | None) -> dict[str, Any]:
        """The training epoch's metric states and checks so far, for a checkpoint (with
        ``synchronise``, every rank's: every rank calls it together)."""
        return {
            "metrics": self.stages.states("train", synchronise=synchronise, device=device),
            "checks": self._checks.state("train", synchronise=synchronise, device=device),
        }

    def load_train_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`train_state`'s output."""
        left = self.stages.load_states("train", 0, state["metrics"])
        self._checks.load("train", 0, state["checks"])
        if left:
            self._owner.info(
                f"the checkpoint's training states of {left} do not fit these metrics: they "
                "start the epoch over"
            )

    def forget(self, stage: str, device: torch.device) -> None:
        """Reset the copies and checks of ``stage``'s single loader without computing them
        (every rank together: two collectives)."""
        self._checks.read(stage, 1, device)
        self.stages.compute_and_reset(stage, 1, device, skip={0})

    def compute(
        self, stage: str, loaders: int, device: torch.device, skip: set[int]
    ) -> dict[str, Tensor]:
        """``{logged name: value}`` of ``stage`` (``train/...`` or ``eval/...``), then reset."""
        values = self.stages.compute_and_reset(stage, loaders, device, skip=skip)
        prefix = f"{'train' if stage == 'train' else 'eval'}/{self._owner.name}_"
        return {f"{prefix}{key}": value for key, value in values.items()}


def loaders_of(trainer: Trainer, stage: str) -> int:
    """How many loaders the running validation (``"val"``) or test stage has."""
    return len(trainer.num_val_batches if stage == "val" else trainer.num_test_batches)
