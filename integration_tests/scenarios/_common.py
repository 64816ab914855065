"""Pieces every scenario script shares: arguments, a tiny model, dict-batch data, saving.

Run a scenario as ``python scenario.py --out DIR [--devices N] [--params JSON]``.
"""

from __future__ import annotations

import argparse
import atexit
import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from spt_core.testing import quiet_trainer


def _leave_process_group() -> None:
    # A gloo group left alive at interpreter exit can abort the process ("terminate called
    # without an active exception") after the scenario's work is done.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def parse() -> argparse.Namespace:
    atexit.register(_leave_process_group)
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--params", type=json.loads, default={})
    args = parser.parse_args()
    L.seed_everything(args.params.get("seed", 0), verbose=False)
    return args


def trainer(args: argparse.Namespace, **kwargs: Any) -> L.Trainer:
    """spt's quiet CPU Trainer (`spt_core.testing.quiet_trainer`); DDP (gloo) when
    ``args.devices > 1``."""
    strategy = "ddp" if args.devices > 1 else "auto"
    return quiet_trainer(**{"devices": args.devices, "strategy": strategy, **kwargs})


def save(args: argparse.Namespace, trainer: L.Trainer, result: dict[str, Any]) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(result, args.out / f"rank{trainer.global_rank}.pt")


def blobs(n: int, dim: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian clusters: ``n`` rows of ``dim`` features, labels ``0..classes-1``."""
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=generator) * 3
    labels = torch.arange(n) % classes
    features = centers[labels] + torch.randn(n, dim, generator=generator)
    return features, labels


class DictDataset(Dataset):
    """Rows as dict batches: ``{"x", "label", "index"}``."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.features[i], "label": self.labels[i], "index": torch.tensor(i)}


def loader(dataset: Dataset, batch_size: int, shuffle: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle)


class Encoder(L.LightningModule):
    """A linear autoencoder; every step returns ``embedding``, ``label`` and the loss.

    It records the indices of the training rows it saw, in order, as ``seen``.
    """

    def __init__(self, in_dim: int, out_dim: int = 8, lr: float = 0.05) -> None:
        super().__init__()
        self.encoder = nn.Linear(in_dim, out_dim)
        self.decoder = nn.Linear(out_dim, in_dim)
        self.lr = lr
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def _step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        embedding = self(batch["x"])
        loss = (self.decoder(embedding) - batch["x"]).pow(2).mean()
        return {"loss": loss, "embedding": embedding, "label": batch["label"]}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
        self.seen.append(batch["index"].clone())
        return self._step(batch)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, *extra) -> dict:
        return self._step(batch)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, *extra) -> dict:
        return self._step(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)
