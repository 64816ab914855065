"""Shared pieces of the spt-latentviz tests: clustered data, and fits on spt-core's test harness."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from spt_core.testing import Backbone, DictDataset, quiet_trainer
from spt_queue import OnlineQueue


def make_blobs(
    n: int, dim: int, classes: int, seed: int = 0, spread: float = 8.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Well separated Gaussian clusters: ``n`` rows, labels ``0..classes-1`` in turn."""
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=generator) * spread
    labels = torch.arange(n) % classes
    return centers[labels] + torch.randn(n, dim, generator=generator), labels


def _no_rows(batch: dict[str, torch.Tensor], module: Backbone) -> dict[str, torch.Tensor]:
    return {"embedding": batch["x"][:0], "label": batch["label"][:0]}


class InputBackbone(Backbone):
    """spt-core's test ``Backbone`` whose embedding is the input itself (exact results).

    With ``emit_rows=False`` its steps return no rows (the queue then keeps whatever it was
    filled with); ``shape`` reshapes each embedding.
    """

    def __init__(self, dim: int, emit_rows: bool = True, shape: tuple[int, ...] | None = None):
        super().__init__(dim, shape=shape, outputs=None if emit_rows else _no_rows)


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
    """Fit a backbone (default: :class:`InputBackbone`) on CPU with ``callbacks``."""
    data = DictDataset(x=features, label=labels)
    trainer = quiet_trainer(
        max_epochs=epochs, default_root_dir=str(root), callbacks=callbacks, **trainer_kwargs
    )
    model = model or InputBackbone(features.shape[1])
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
def backbone() -> type[InputBackbone]:
    return InputBackbone


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
