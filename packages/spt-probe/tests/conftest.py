"""Shared pieces of the spt-probe tests: a tiny backbone, dict-batch data, a quiet Trainer."""

from __future__ import annotations

import contextlib
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


class DictDataset(Dataset):
    """Rows as dict batches ``{"x", "label", "index"}``."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.features[i], "label": self.labels[i], "index": torch.tensor(i)}


def blobs(n: int = 48, dim: int = 6, classes: int = 3, seed: int = 0) -> DictDataset:
    """Gaussian clusters, labels ``0..classes-1`` in turn."""
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=generator) * 3
    labels = torch.arange(n) % classes
    return DictDataset(centers[labels] + torch.randn(n, dim, generator=generator), labels)


class Backbone(L.LightningModule):
    """A linear encoder trained on a reconstruction loss; steps return ``embedding``.

    Args:
        dim: Input size.
        width: Embedding size.
        dropout: Dropout on the embedding (consumes the global RNG in training).
        manual: Use manual optimization.
        feature_dtype: dtype the embedding is returned in (e.g. ``torch.bfloat16``).
        detach: Return the embedding detached (``False`` checks that the probe detaches).
    """

    def __init__(
        self,
        dim: int = 6,
        width: int = 5,
        dropout: float = 0.0,
        manual: bool = False,
        feature_dtype: torch.dtype | None = None,
        detach: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = nn.Linear(dim, width)
        self.decoder = nn.Linear(width, dim)
        self.dropout = nn.Dropout(dropout)
        self.automatic_optimization = not manual
        self.feature_dtype = feature_dtype
        self.detach = detach

    def _step(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        z = self.dropout(self.encoder(batch["x"]))
        loss = (self.decoder(z) - batch["x"]).pow(2).mean()
        feature = z.detach() if self.detach else z
        if self.feature_dtype is not None:
            feature = feature.to(self.feature_dtype)
        return {"loss": loss, "embedding": feature}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, Any]:
        out = self._step(batch)
        if not self.automatic_optimization:
            optimizer = self.optimizers()
            optimizer.zero_grad()
            self.manual_backward(out["loss"])
            optimizer.step()
            out["loss"] = out["loss"].detach()
        return out

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return self._step(batch)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return self._step(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def quiet_trainer(**kwargs: Any) -> L.Trainer:
    settings: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
        "max_epochs": 1,
    }
    settings.update(kwargs)
    return L.Trainer(**settings)


@pytest.fixture
def data() -> DictDataset:
    return blobs()


@pytest.fixture
def make_data():
    return blobs


@pytest.fixture
def backbone():
    """The ``Backbone`` class (call it with options)."""
    return Backbone


@pytest.fixture
def trainer():
    """``trainer(**kwargs)``: a quiet one-device CPU Trainer, one epoch unless told."""
    return quiet_trainer


@pytest.fixture
def loader():
    def make(dataset: Dataset, batch_size: int = 8, shuffle: bool = False) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle)

    return make


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors run faster on one intra-op thread, and do not stall on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_SYNCS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


@contextlib.contextmanager
def host_syncs_forbidden():
    """Inside, any Tensor method that waits for the device's values raises."""
    saved = {name: getattr(torch.Tensor, name) for name in _SYNCS}

    def refuse(name):
        def fail(self, *args, **kwargs):
            raise AssertionError(f"Tensor.{name} called on a per-batch path")

        return fail

    for name in _SYNCS:
        setattr(torch.Tensor, name, refuse(name))
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


@pytest.fixture
def no_host_sync():
    """``no_host_sync(hook)``: ``hook`` wrapped so that it may not synchronise with the host;
    the wrapper counts its calls in ``.calls``."""

    def wrap(hook):
        def run(*args, **kwargs):
            run.calls += 1
            with host_syncs_forbidden():
                return hook(*args, **kwargs)

        run.calls = 0
        return run

    return wrap
