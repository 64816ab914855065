"""An OnlineProbe whose probe holds a BatchNorm (float32 weights, an int64 counter) under DDP.

params: n, batch_size, epochs, hashseed (the PYTHONHASHSEED rank 1 is started with; rank 0
keeps the harness's), unlabelled (every how many-th training row carries the label -1),
save (checkpoint path written after fit).

Each rank builds its probe from a different seed and trains on its own rows, so the BatchNorm
running statistics drift apart within an epoch. A recorder placed before the probe keeps each
rank's own statistics as they are when a validation run starts, before the probe makes them
common; the result holds those and the probe's final state.
"""

import os

import lightning as L
import torch
from _common import DictDataset, Encoder, blobs, parse, save, trainer
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from torchmetrics.classification import MulticlassAccuracy

from spt_probe import OnlineProbe

started_with = os.environ.get("PYTHONHASHSEED")  # before rank 0 sets rank 1's
args = parse()
p = {"n": 64, "batch_size": 4, "epochs": 2, "hashseed": 1, "unlabelled": 5, **args.params}
features, labels = blobs(p["n"], dim=4, classes=3)
train_labels = labels.clone()
train_labels[p["unlabelled"] - 1 :: p["unlabelled"]] = -1


def rank_dependent_probe(pl_module):
    torch.manual_seed(1000 + pl_module.global_rank)
    probe = nn.Sequential(nn.BatchNorm1d(8), nn.Linear(8, 3))
    with torch.no_grad():  # statistics that differ from the start on
        probe[0].running_mean.uniform_(-1, 1)
    return probe


class Rows(L.LightningDataModule):
    def _loader(self, labels) -> DataLoader:
        data = DictDataset(features, labels)
        sharded = torch.distributed.is_available() and torch.distributed.is_initialized()
        sampler = DistributedSampler(data, shuffle=False) if sharded else None
        return DataLoader(data, batch_size=p["batch_size"], sampler=sampler)

    def train_dataloader(self) -> DataLoader:
        return self._loader(train_labels)

    def val_dataloader(self) -> DataLoader:
        return self._loader(labels)


class OwnStatistics(L.Callback):
    """The probe's buffers on this rank when a validation run starts, before the probe's
    own hook (callbacks run in list order)."""

    def __init__(self):
        self.seen = []

    def on_validation_start(self, trainer, pl_module):
        module = pl_module.callbacks_modules["bn"]
        self.seen.append({k: v.clone() for k, v in module.named_buffers()})


if os.environ.get("LOCAL_RANK") is None:  # rank 0, before Lightning starts rank 1
    os.environ["PYTHONHASHSEED"] = str(p["hashseed"])
probe = OnlineProbe(
    name="bn",
    input="embedding",
    target="label",
    probe=rank_dependent_probe,
    metrics=MulticlassAccuracy(3, average="micro"),
)
own = OwnStatistics()
model = Encoder(in_dim=4)
fit = trainer(
    args,
    max_epochs=p["epochs"],
    callbacks=[own, probe],
    use_distributed_sampler=False,
    log_every_n_steps=1,
)
fit.fit(model, datamodule=Rows())
if p.get("save"):
    fit.save_checkpoint(p["save"])
save(
    args,
    fit,
    {
        "own": own.seen,
        "weights": {k: v.clone() for k, v in probe.module.state_dict().items()},
        "logged": {k: v.clone() for k, v in fit.callback_metrics.items()},
        "steps": probe.optimizer_steps,
        "hashseed": started_with,
    },
)
