"""What every end-to-end run shares: blob data, a backbone, and all spt callbacks at once.

Not a scenario itself (it runs nothing when imported): ``e2e_ddp.py`` imports it, and the
in-process tests ``test_e2e_*.py`` import it after putting this folder on ``sys.path``.

One Trainer carries OnlineKNN, a linear and an MLP OnlineProbe, LatentViz and a
MetricsCallback with a torchmetrics metric (on the linear probe's predictions) and a plain
function (on the embeddings). Every module a callback builds is built from a fixed seed
inside the callback's own random stream, so runs with and without callbacks draw the same
global random numbers.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from _common import DictDataset, Encoder, blobs, trainer
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchmetrics.classification import MulticlassAccuracy

from spt_core.testing import ResumableLoader
from spt_knn import OnlineKNN
from spt_latentviz import LatentViz, projection_mlp
from spt_metrics import MetricsCallback
from spt_probe import OnlineProbe

IN_DIM, EMBED_DIM, CLASSES = 4, 8, 3
TRAIN_ROWS, VAL_ROWS = 64, 32

# Every name the callbacks below must log (Lightning may add ``_step``/``_epoch`` variants
# of the per-step values, e.g. ``train/viz_loss_step``).
REQUIRED = (
    "eval/knn_accuracy",
    "train/linear_loss",
    "train/linear_accuracy",
    "eval/linear_accuracy",
    "train/mlp_loss",
    "train/mlp_accuracy",
    "eval/mlp_accuracy",
    "train/viz_loss",
    "eval/viz_trustworthiness",
    "eval/viz_knn_recall",
    "probe_accuracy/train",
    "probe_accuracy/val",
    "embedding_norm/train",
    "embedding_norm/val",
)


def data(seed: int = 0) -> tuple[DictDataset, DictDataset]:
    """Training blobs and noisy held-out rows (so that accuracies stay below 1)."""
    features, labels = blobs(TRAIN_ROWS + VAL_ROWS, IN_DIM, CLASSES, seed=seed)
    noise = torch.randn(VAL_ROWS, IN_DIM, generator=torch.Generator().manual_seed(seed + 1))
    train = DictDataset(features[:TRAIN_ROWS], labels[:TRAIN_ROWS])
    validation = DictDataset(features[TRAIN_ROWS:] + 2 * noise, labels[TRAIN_ROWS:])
    return train, validation


class Rows(L.LightningDataModule):
    """The :func:`data` rows in order, in batches of ``batch_size``.

    Under DDP rank ``r`` takes rows ``r, r + W, ...`` (loaders are built once the process
    group exists), so one process with ``W`` times the batch size sees exactly the global
    batches of ``W`` ranks.
    """

    def __init__(self, batch_size: int = 8, seed: int = 0, resumable: bool = False) -> None:
        super().__init__()
        self.batch_size, self.resumable = batch_size, resumable
        self.train, self.validation = data(seed)

    def _loader(self, dataset: Dataset, kind: type[DataLoader] = DataLoader) -> DataLoader:
        sharded = torch.distributed.is_available() and torch.distributed.is_initialized()
        sampler = DistributedSampler(dataset, shuffle=False) if sharded else None
        return kind(dataset, batch_size=self.batch_size, sampler=sampler)

    def train_dataloader(self) -> DataLoader:
        # A resumable loader continues a mid-epoch checkpoint's epoch where it stopped.
        return self._loader(self.train, ResumableLoader if self.resumable else DataLoader)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.validation)


class Backbone(Encoder):
    """The shared linear autoencoder, with optional dropout and manual optimization.

    Dropout makes the backbone draw global random numbers every step, so a callback that
    consumed any would change its weights.
    """

    def __init__(self, manual: bool = False, dropout: float = 0.0, lr: float = 0.05) -> None:
        super().__init__(IN_DIM, EMBED_DIM, lr)
        self.automatic_optimization = not manual
        self.dropout = nn.Dropout(dropout)

    def _step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        embedding = self(batch["x"])
        loss = (self.decoder(self.dropout(embedding)) - batch["x"]).pow(2).mean()
        return {"loss": loss, "embedding": embedding, "label": batch["label"]}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
        out = super().training_step(batch, batch_idx)
        if not self.automatic_optimization:
            optimizer = self.optimizers()
            optimizer.zero_grad()
            self.manual_backward(out["loss"])
            optimizer.step()
        return out


class Faulty(Backbone):
    """A :class:`Backbone` whose step outputs go through ``fault(model, stage, batch, out)``
    (``stage`` is ``"train"`` or ``"val"``): the bad-input tests break one thing at a time."""

    def __init__(self, fault: Callable[..., dict], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fault = fault

    def _step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = super()._step(batch)
        return self.fault(self, "train" if self.training else "val", batch, out)


def global_batch(batch: dict[str, torch.Tensor]) -> int:
    """Which batch of 8 rows (one process) this batch belongs to; the same on every rank."""
    return int(batch["index"][0]) // 8


def wide(where: str) -> Callable[..., dict]:
    """A fault: in ``where``, the embedding rows are twice as wide (16 features)."""

    def fault(model, stage, batch, out):
        if stage == where:
            out["embedding"] = torch.cat([out["embedding"]] * 2, dim=1)
        return out

    return fault


def relabel(where: str, number: int, label: int) -> Callable[..., dict]:
    """A fault: the first row of batch ``number`` of ``where`` gets the label ``label``."""

    def fault(model, stage, batch, out):
        if stage == where and global_batch(batch) == number:
            out["label"] = out["label"].clone()
            out["label"][0] = label
        return out

    return fault


def nan_row(where: str, number: int) -> Callable[..., dict]:
    """A fault: the first row of batch ``number`` of ``where`` has a NaN feature."""

    def fault(model, stage, batch, out):
        if stage == where and global_batch(batch) == number:
            out["embedding"] = out["embedding"].detach().clone()
            out["embedding"][0, 0] = float("nan")
        return out

    return fault


def seeded(build, seed: int):
    """A factory that builds a module from a fixed seed (inside the callback's own stream)."""

    def factory() -> nn.Module:
        torch.manual_seed(seed)
        return build()

    return factory


def embedding_norm(embedding: np.ndarray) -> float:
    """Mean Euclidean norm of the embedding rows: a plain-function metric."""
    return float(np.linalg.norm(embedding, axis=1).mean())


def accuracy() -> MulticlassAccuracy:
    return MulticlassAccuracy(CLASSES, average="micro", validate_args=False)


def callbacks(queue_length: int = 32, save_dir: str | Path | None = None) -> list[L.Callback]:
    """Every spt callback, each with its usual logged names (see :data:`REQUIRED`).

    ``queue_length`` is per rank: a DDP run of ``W`` ranks with ``L`` rows each holds the
    rows of one process with ``W * L``.
    """
    return [
        OnlineKNN(
            "knn",
            input="embedding",
            target="label",
            queue_length=queue_length,
            metrics={"accuracy": accuracy()},
            num_classes=CLASSES,
            k=5,
            temperature=0.5,
        ),
        OnlineProbe(
            name="linear",
            input="embedding",
            target="label",
            probe=seeded(lambda: nn.Linear(EMBED_DIM, CLASSES), 1),
            metrics={"accuracy": accuracy()},
        ),
        OnlineProbe(
            name="mlp",
            input="embedding",
            target="label",
            probe=seeded(
                lambda: nn.Sequential(nn.Linear(EMBED_DIM, 16), nn.ReLU(), nn.Linear(16, CLASSES)),
                2,
            ),
            optimizer={"type": "AdamW", "lr": 1e-2},
            metrics={"accuracy": accuracy()},
        ),
        LatentViz(
            "viz",
            "embedding",
            "label",
            seeded(lambda: projection_mlp(EMBED_DIM, 16), 3),
            queue_length=queue_length,
            k_neighbors=5,
            update_interval=2,
            plot_interval=1,
            save_dir=save_dir,
        ),
        # Last, so that the linear probe has written its predictions into the batch.
        MetricsCallback(
            {"probe_accuracy": accuracy(), "embedding_norm": embedding_norm},
            needs={"probe_accuracy": {"preds": "linear_preds", "target": "label"}},
            every_n_train_epochs=1,
        ),
    ]


def make_trainer(devices: int = 1, **kwargs: Any) -> L.Trainer:
    """``_common.trainer`` outside a scenario script (no command line)."""
    return trainer(argparse.Namespace(devices=devices), **kwargs)


def logged(fit: L.Trainer) -> dict[str, float]:
    """``trainer.callback_metrics`` as floats: the model logs nothing, so all are spt's."""
    return {key: float(value) for key, value in fit.callback_metrics.items()}


def assert_same(first: Any, second: Any, where: str = "state") -> None:
    """Equal, recursively (dicts, lists, tuples); tensors bit for bit. ``where`` names the
    part that differs."""
    if isinstance(first, torch.Tensor):
        assert isinstance(second, torch.Tensor), where
        assert torch.equal(first, second), where
    elif isinstance(first, dict):
        assert first.keys() == second.keys(), where
        for key in first:
            assert_same(first[key], second[key], f"{where}[{key!r}]")
    elif isinstance(first, (list, tuple)):
        assert len(first) == len(second), where
        for i, (a, b) in enumerate(zip(first, second, strict=True)):
            assert_same(a, b, f"{where}[{i}]")
    else:
        assert first == second, where
