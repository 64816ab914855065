"""OnlineKNNs in both distributed modes in one DDP fit.

"gather" (gather mode) and "shared" (shard mode) share the "embedding" and "label" queues,
which never gather: the first gathers what it reads, the second keeps each rank's own rows;
"shard" (shard mode) has queues of its own ("local_embedding", "local_label", the same
values). Each rank trains on its own rows (rank r gets
rows r, r + W, ...) and validates on its own, unevenly sized, slice of the validation rows
(20 rows on rank 0, 17 on rank 1: batches of 8, 8, 4 and 8, 8, 1).

Sweeps (#15.2): "sweep_gather" and "sweep_shard" evaluate k = 3, 5 and T = 0.5, 2 from one
search each; "gather" (k=5, T=0.5), "k3_t0_5", "k3_t2" and "k5_t2" are the same pairs as
separate gather-mode callbacks. Clean banks (#16): "clean_gather" and "clean_shard"
(queue_length=0) score the validation rows against a clean loader of 30 rows (batches of 4:
rank 0 embeds batches 0, 2, 4, 6, rank 1 the others).

params: n, batch_size, queue_length, epochs, metric, weighting.
"""

import lightning as L
import torch
from _common import DictDataset, Encoder, blobs, parse, save, trainer
from torch.utils.data import DataLoader, DistributedSampler, Subset
from torchmetrics.classification import MulticlassAccuracy

from spt_core import distributed
from spt_knn import OnlineKNN
from spt_queue import OnlineQueue, find_queue

args = parse()
p = {
    "n": 64,
    "batch_size": 4,
    "queue_length": 12,
    "epochs": 1,
    "metric": "euclidean",
    "weighting": "inverse",
    **args.params,
}
features, labels = blobs(p["n"] + 37, dim=4, classes=3)
noise = torch.randn(37, 4, generator=torch.Generator().manual_seed(3)) * 2
train = DictDataset(features[: p["n"]], labels[: p["n"]])
validation = DictDataset(features[p["n"] :] + noise, labels[p["n"] :])
val_rows = [range(20), range(20, 37)]


class Model(Encoder):
    def _step(self, batch):
        out = super()._step(batch)
        return {**out, "local_embedding": out["embedding"], "local_label": out["label"]}

    def train_dataloader(self):
        sampler = DistributedSampler(
            train, self.trainer.world_size, self.trainer.global_rank, shuffle=False
        )
        return DataLoader(train, batch_size=p["batch_size"], sampler=sampler)

    def val_dataloader(self):
        rows = val_rows[self.trainer.global_rank]
        return DataLoader(Subset(validation, rows), batch_size=8)


class Keep(L.Callback):
    """Every validation batch's predictions of both callbacks, and the logged values."""

    def __init__(self):
        self.preds = {name: [] for name in PREDS}
        self.logged = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, idx=0):
        for name in self.preds:
            self.preds[name].append(batch[f"{name}_preds"])

    def on_validation_epoch_end(self, trainer, pl_module):
        # What gather mode searched: every rank's rows, gathered by the reader (collective).
        n = p["queue_length"]
        self.snapshots = {
            "bank": distributed.gather_uneven(find_queue(trainer, "embedding").read(n)),
            "bank_labels": distributed.gather_uneven(find_queue(trainer, "label").read(n)),
            "local_snapshot": find_queue(trainer, "local_embedding").read(n),
            "index_snapshot": distributed.gather_uneven(find_queue(trainer, "index").read()),
        }

    def on_validation_end(self, trainer, pl_module):
        logged = trainer.callback_metrics
        self.logged.append({k: v.item() for k, v in logged.items() if k.startswith("eval/")})


def knn(name, mode, prefix="", k=5, temperature=0.5, **kwargs):
    return OnlineKNN(
        name,
        input=f"{prefix}embedding",
        target=f"{prefix}label",
        queue_length=kwargs.pop("queue_length", p["queue_length"]),
        metrics={"accuracy": MulticlassAccuracy(3, average="micro")},
        num_classes=3,
        k=k,
        temperature=temperature,
        distance_metric=p["metric"],
        weighting=p["weighting"],
        distributed=mode,
        **kwargs,
    )


clean = DictDataset(*blobs(30, dim=4, classes=3))  # the same centres as the other rows
clean.features += torch.randn(30, 4, generator=torch.Generator().manual_seed(4))
sweeps = [
    knn(f"sweep_{mode}", mode, k=(3, 5), temperature=(0.5, 2)) for mode in ("gather", "shard")
]
singles = [knn(f"k{k}_t{t}".replace(".", "_"), "gather", k=k, temperature=t)
           for k, t in ((3, 0.5), (3, 2.0), (5, 2.0))]  # fmt: skip
cleans = [
    knn(f"clean_{mode}", mode, queue_length=0, clean_loader=DataLoader(clean, batch_size=4))
    for mode in ("gather", "shard")
]
PREDS = ["gather", "shared", "shard", "sweep_gather", "sweep_shard", "clean_gather_clean",
         "clean_shard_clean", *(c.name for c in singles)]  # fmt: skip


indices = OnlineQueue("index", p["queue_length"])
keep = Keep()
model = Model(in_dim=4)
fit = trainer(
    args,
    max_epochs=p["epochs"],
    callbacks=[
        knn("gather", "gather"),
        knn("shared", "shard"),
        knn("shard", "shard", prefix="local_"),
        *sweeps,
        *singles,
        *cleans,
        indices,
        keep,
    ],
    use_distributed_sampler=False,
)
fit.fit(model)
model.eval()
with torch.no_grad():
    rows = validation.features[list(val_rows[fit.global_rank])]
    embeddings = torch.cat([model(x) for x in rows.split(8)])  # the products validation ran
save(
    args,
    fit,
    {
        "preds": keep.preds,
        "logged": keep.logged,
        **keep.snapshots,
        "own_rows": find_queue(fit, "embedding").read(),
        "seen": torch.cat(model.seen),
        "embeddings": embeddings,
        "labels": validation.labels[list(val_rows[fit.global_rank])],
        "clean": (model(clean.features).detach(), clean.labels),
    },
)
