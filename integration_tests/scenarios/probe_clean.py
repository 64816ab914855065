"""An OnlineProbe with a clean evaluation (``clean_loader``) on a real fit, one or two ranks.

params: n (training and validation rows), n_clean (clean rows), clean_batch (rows per clean
batch: rank r of W embeds clean batches r, r + W, ...), batch_size, epochs, every
(clean_every_n_epochs), clean_epochs, clean_batch_size, seed, lr (the backbone's; 0 keeps it
fixed, so that one and two processes embed identical features).

The training and validation loaders are sharded by this script without shuffling (rank r
takes rows r, r + W, ...), so one process with W times the batch size sees the same global
batches. The result holds the last clean probe, the last epoch of its schedule, the logged
clean accuracy, the final backbone and the data, for an offline recomputation.
"""

import torch
from _common import DictDataset, Encoder, blobs, parse, save, trainer
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from torchmetrics.classification import MulticlassAccuracy

from spt_probe import OnlineProbe

args = parse()
p = {
    "n": 64, "n_clean": 40, "clean_batch": 20, "batch_size": 4, "epochs": 2, "every": 1,
    "clean_epochs": 4, "clean_batch_size": 8, "lr": 0.05, **args.params,
}  # fmt: skip
data = DictDataset(*blobs(p["n"], dim=4, classes=3))
clean = DictDataset(*blobs(p["n_clean"], dim=4, classes=3, seed=7))


def sharded(dataset: DictDataset, batch_size: int) -> DataLoader:
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    sampler = DistributedSampler(dataset, shuffle=False) if distributed else None
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler)


def linear() -> nn.Module:
    torch.manual_seed(1000)
    return nn.Linear(8, 3)


probe = OnlineProbe(
    name="linear",
    input="embedding",
    target="label",
    probe=linear,
    metrics=MulticlassAccuracy(3, average="micro", validate_args=False),
    clean_loader=DataLoader(clean, batch_size=p["clean_batch"]),
    clean_every_n_epochs=p["every"],
    clean_epochs=p["clean_epochs"],
    clean_batch_size=p["clean_batch_size"],
    clean_seed=p.get("seed", 0),
)
model = Encoder(in_dim=4, lr=p["lr"])
fit = trainer(args, max_epochs=p["epochs"], callbacks=[probe], use_distributed_sampler=False)
fit.fit(model, sharded(data, p["batch_size"]), sharded(data, p["batch_size"]))
state = probe.state_dict()["clean"]
save(
    args,
    fit,
    {
        "clean_probe": {k: v.clone() for k, v in probe._clean.probe.state_dict().items()},
        "trained_epoch": state["schedule"]["last_epoch"],
        "clean_accuracy": fit.callback_metrics["eval/linear_clean_accuracy"].clone(),
        "accuracy": fit.callback_metrics["eval/linear_accuracy"].clone(),
        "backbone": {k: v.clone() for k, v in model.state_dict().items()},
        "clean": (clean.features, clean.labels),
        "val": (data.features, data.labels),
    },
)
