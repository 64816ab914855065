"""Shared harness of the spt-metrics tests: dict-batch data, a module whose step outputs are
chosen by the test, a logger that records every logged value, and a quiet CPU Trainer."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.utils.data import DataLoader, Dataset


class RecordingLogger(Logger):
    """Keeps every ``log_metrics`` call as ``(step, {name: value})``."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.records.append((step, dict(metrics)))

    def values(self, name: str) -> list[float]:
        """Every value logged under ``name``, in order."""
        return [metrics[name] for _, metrics in self.records if name in metrics]

    def names(self) -> set[str]:
        return {name for _, metrics in self.records for name in metrics}


class DictDataset(Dataset):
    """Rows of several equally long tensors, served as dict batches (plus ``index``)."""

    def __init__(self, **columns: torch.Tensor) -> None:
        lengths = {len(c) for c in columns.values()}
        assert len(lengths) == 1, lengths
        self.columns = columns
        self.length = lengths.pop()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = {key: column[i] for key, column in self.columns.items()}
        row["index"] = torch.tensor(i)
        return row


class OutputsModule(L.LightningModule):
    """A module with one trainable weight whose steps return ``outputs(batch, module)``.

    The loss is ``weight * mean(x)`` so that the optimizer has something to step; what the
    metrics see is whatever ``outputs`` returns (by default the batch without its ``x``).
    Every step's batch indices are recorded per stage in ``seen``.
    """

    def __init__(self, outputs: Callable[[dict, Any], dict] | None = None, lr: float = 0.1):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))
        self.outputs = outputs or (lambda batch, module: dict(batch))
        self.lr = lr
        self.seen: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "test": []}

    def _step(self, stage: str, batch: dict) -> dict:
        self.seen[stage].append(batch["index"])
        out = self.outputs(batch, self)
        out["loss"] = self.weight * batch["index"].float().mean()
        return out

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        return self._step("train", batch)

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return self._step("val", batch)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return self._step("test", batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def loader(dataset: Dataset, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


def make_trainer(callbacks: list, **kwargs: Any) -> L.Trainer:
    """A quiet single-process CPU Trainer that records every logged value."""
    settings: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 1,
        "logger": RecordingLogger(),
        "log_every_n_steps": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
        "callbacks": callbacks,
    }
    settings.update(kwargs)
    return L.Trainer(**settings)


def classification(n: int, classes: int, correct: float, seed: int) -> dict[str, torch.Tensor]:
    """``n`` rows with ``logits`` whose argmax equals ``target`` for about ``correct`` of them."""
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(classes, (n,), generator=generator)
    right = torch.rand(n, generator=generator) < correct
    wrong = (target + torch.randint(1, classes, (n,), generator=generator)) % classes
    predicted = torch.where(right, target, wrong)
    logits = torch.randn(n, classes, generator=generator)
    logits[torch.arange(n), predicted] += 4.0
    return {"logits": logits, "target": target, "x": torch.randn(n, generator=generator)}


@pytest.fixture
def harness() -> SimpleNamespace:
    """What the tests share (test modules cannot import each other with importlib mode)."""
    return SimpleNamespace(
        RecordingLogger=RecordingLogger,
        DictDataset=DictDataset,
        OutputsModule=OutputsModule,
        loader=loader,
        make_trainer=make_trainer,
        classification=classification,
    )
