"""Shared harness of the spt-metrics tests, built on `spt_core.testing`: dict-batch data, a
module whose step outputs are chosen by the test, a recording logger, a quiet CPU Trainer."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from spt_core.testing import Backbone, DictDataset, RecordingLogger, quiet_trainer


def outputs_module(outputs: Callable[[dict, Any], dict] | None = None, lr: float = 0.1) -> Backbone:
    """A `Backbone` whose steps return ``outputs(batch, module)`` (default: the batch as is)."""
    return Backbone(outputs=outputs or _batch, lr=lr)


def _batch(batch: dict, module: Any) -> dict:
    return dict(batch)


def loader(dataset: Dataset, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


def make_trainer(callbacks: list, **kwargs: Any) -> L.Trainer:
    """A quiet single-process CPU Trainer that records every logged value."""
    settings = {"callbacks": callbacks, "logger": RecordingLogger(), "log_every_n_steps": 1}
    return quiet_trainer(**{**settings, **kwargs})


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
        OutputsModule=outputs_module,
        loader=loader,
        make_trainer=make_trainer,
        classification=classification,
    )
