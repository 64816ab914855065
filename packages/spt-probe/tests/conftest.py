"""Shared pieces of the spt-probe tests, from `spt_core.testing`: a tiny backbone, dict-batch
data (``x``, ``label``, ``index``), a quiet Trainer."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from spt_core.testing import Backbone, DictDataset, forbid_host_sync, quiet_trainer


def blobs(n: int = 48, dim: int = 6, classes: int = 3, seed: int = 0) -> DictDataset:
    """Gaussian clusters, labels ``0..classes-1`` in turn."""
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=generator) * 3
    labels = torch.arange(n) % classes
    return DictDataset(x=centers[labels] + torch.randn(n, dim, generator=generator), label=labels)


class ProbeBackbone(Backbone):
    """`Backbone` with a linear 6 -> 5 encoder unless told (its steps return ``embedding``)."""

    def __init__(self, dim: int = 6, width: int = 5, **options: Any) -> None:
        super().__init__(dim, width, **options)


@pytest.fixture
def data() -> DictDataset:
    return blobs()


@pytest.fixture
def make_data():
    return blobs


@pytest.fixture
def backbone():
    """The ``ProbeBackbone`` class (call it with `spt_core.testing.Backbone`'s options)."""
    return ProbeBackbone


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


@pytest.fixture
def no_host_sync():
    """``no_host_sync(hook)``: ``hook`` wrapped in `spt_core.testing.forbid_host_sync`; the
    wrapper counts its calls in ``.calls``. The metrics in such a test must be sync-free too
    (`spt_core.testing.SyncFreeAccuracy`): torchmetrics' classification metrics sync."""

    def wrap(hook):
        def run(*args, **kwargs):
            run.calls += 1
            with forbid_host_sync():
                return hook(*args, **kwargs)

        run.calls = 0
        return run

    return wrap
