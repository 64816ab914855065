"""Train OnlineProbes on a real fit; report the probe's weights, optimizer state and metrics.

params: n, batch_size, epochs, accumulate, clip, seed, save (checkpoint path written after
fit), resume (checkpoint path to resume from). Each rank builds its linear probe from a
different seed, so identical weights after training show that rank 0's start was broadcast.

Lightning shuffles a training loader whenever it injects a DistributedSampler, so this
script shards the data itself, without shuffling (rank r takes rows r, r + W, ...): one
process with W times the batch size then sees exactly the same global batches.
"""

import lightning as L
import torch
from _common import DictDataset, Encoder, blobs, parse, save, trainer
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from torchmetrics.classification import MulticlassAccuracy

from spt_probe import OnlineProbe

args = parse()
p = {"n": 64, "batch_size": 4, "epochs": 1, "accumulate": 1, "clip": None, **args.params}
features, labels = blobs(p["n"], dim=4, classes=3)
data = DictDataset(features, labels)


def rank_dependent_probe(pl_module):
    torch.manual_seed(1000 + pl_module.global_rank)
    return nn.Linear(8, 3)


def mlp():
    torch.manual_seed(2000)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


class Rows(L.LightningDataModule):
    def _loader(self) -> DataLoader:
        sharded = torch.distributed.is_available() and torch.distributed.is_initialized()
        sampler = DistributedSampler(data, shuffle=False) if sharded else None
        return DataLoader(data, batch_size=p["batch_size"], sampler=sampler)

    def train_dataloader(self) -> DataLoader:
        return self._loader()

    def val_dataloader(self) -> DataLoader:
        return self._loader()


probes = [
    OnlineProbe(
        name="linear",
        input="embedding",
        target="label",
        probe=rank_dependent_probe,
        accumulate_grad_batches=p["accumulate"],
        gradient_clip_val=p["clip"],
        metrics=MulticlassAccuracy(3, average="micro", validate_args=False),
    ),
    OnlineProbe(
        name="mlp",
        input="embedding",
        target="label",
        probe=mlp,
        optimizer={"type": "AdamW", "lr": 1e-2},
        scheduler={"type": "StepLR", "step_size": 3, "gamma": 0.5},
    ),
]
model = Encoder(in_dim=4)
fit = trainer(args, max_epochs=p["epochs"], callbacks=probes, use_distributed_sampler=False)
fit.fit(model, datamodule=Rows(), ckpt_path=p.get("resume"))
if p.get("save"):
    fit.save_checkpoint(p["save"])
save(
    args,
    fit,
    {
        name: {
            "weights": {k: v.clone() for k, v in probe.module.state_dict().items()},
            "optimizer": probe.optimizer.state_dict(),
            "steps": probe.optimizer_steps,
            "lr": probe.optimizer.param_groups[0]["lr"],
        }
        for name, probe in zip(("linear", "mlp"), probes, strict=True)
    }
    | {
        "accuracy": fit.callback_metrics["eval/linear_accuracy"].clone(),
        "backbone": {k: v.clone() for k, v in model.state_dict().items()},
        "registered": sorted(model.callbacks_modules),
        "seen": model.seen,
    },
)
