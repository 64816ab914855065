"""Shared pieces of the spt-latentviz tests: clustered data and a real Trainer harness."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from spt_queue import OnlineQueue


def make_blobs(
    n: int, dim: int, classes: int, seed: int = 0, spread: float = 8.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Well separated Gaussian clusters: ``n`` rows, labels ``0..classes-1`` in turn."""
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=generator) * spread
    labels = torch.arange(n) % classes
    return centers[labels] + torch.randn(n, dim, generator=generator), labels


class Rows(Dataset):
    """Dict batches ``{"x", "label"}``."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.features[i], "label": self.labels[i]}


class Backbone(L.LightningModule):
    """A frozen-by-construction encoder: it never steps, so its gradients must stay ``None``.

    Steps return ``{"embedding", "label"}``; with ``emit_rows=False`` they return no rows
    (the queue then keeps whatever it was filled with); ``shape`` reshapes each embedding.
    """

    def __init__(self, dim: int, emit_rows: bool = True, shape: tuple[int, ...] | None = None):
        super().__init__()
        self.shape = shape
        self.automatic_optimization = False
        self.encoder = nn.Linear(dim, dim)
        with torch.no_grad():
            self.encoder.weight.copy_(torch.eye(dim))
            self.encoder.bias.zero_()
        self.emit_rows = emit_rows

    def _step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        embedding = self.encoder(batch["x"])
        if self.shape is not None:
            embedding = embedding.reshape(len(embedding), *self.shape)
        if not self.emit_rows:
            return {"embedding": embedding[:0], "label": batch["label"][:0]}
        return {"embedding": embedding, "label": batch["label"]}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
        return self._step(batch)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
        return self._step(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def fit(
    callbacks: list[Any],
    features: torch.Tensor,
    labels: torch.Tensor,
    root: Path,
    epochs: int = 1,
    batch_size: int = 32,
    validate: bool = True,
    ckpt_path: str | None = None,
    model: Backbone | None = None,
    **trainer_kwargs: Any,
) -> L.Trainer:
    """Fit a :class:`Backbone` on CPU with ``callbacks``; returns the Trainer."""
    data = Rows(features, labels)
    settings: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": epochs,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": str(root),
        "callbacks": callbacks,
    }
    settings.update(trainer_kwargs)
    trainer = L.Trainer(**settings)
    model = model or Backbone(features.shape[1])
    train = DataLoader(data, batch_size=batch_size)
    val = DataLoader(data, batch_size=batch_size) if validate else None
    trainer.fit(model, train, val, ckpt_path=ckpt_path)
    return trainer


def prefilled_queues(features: torch.Tensor, labels: torch.Tensor) -> list[OnlineQueue]:
    """Queues of ``embedding`` and ``label`` already holding every row."""
    embedding = OnlineQueue("embedding", len(features))
    label = OnlineQueue("label", len(labels))
    embedding.buffer.append(features)
    label.buffer.append(labels)
    return [embedding, label]


@pytest.fixture(scope="session")
def blobs() -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """``blobs(n, dim, classes, seed=0, spread=8.0)``: see :func:`make_blobs`."""
    return make_blobs


@pytest.fixture(scope="session")
def fit_trainer() -> Callable[..., L.Trainer]:
    """``fit_trainer(callbacks, features, labels, root, **options)``: see :func:`fit`."""
    return fit


@pytest.fixture
def run_fit(tmp_path: Path) -> Callable[..., L.Trainer]:
    """Like ``fit_trainer`` with ``root`` defaulting to the test's ``tmp_path``."""

    def run(callbacks: list[Any], features, labels, **options: Any) -> L.Trainer:
        options.setdefault("root", tmp_path)
        return fit(callbacks, features, labels, **options)

    return run


@pytest.fixture(scope="session")
def backbone() -> type[Backbone]:
    return Backbone


@pytest.fixture(scope="session")
def queues_holding() -> Callable[[torch.Tensor, torch.Tensor], list[OnlineQueue]]:
    return prefilled_queues


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """These tests run many tiny kernels: one thread per process avoids oversubscribing the
    CPU (pytest-xdist workers, neighbours on a shared machine). Restored after each module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
