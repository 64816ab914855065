"""OnlineKNN under DDP when the ranks run different numbers of validation batches.

Validation loaders are iterable datasets that yield whole batches, planned per rank:

- loader 0: rank 0 runs batches of 8, 8, 4 rows; rank 1 runs none;
- loader 1: rank 0 runs 8, 1; rank 1 runs 4, 8, 8, 1 (later batches larger than the first);
- loader 2: no rank runs a batch.

With ``loaders="sized"`` they are lists of batches instead (known lengths), and rank 1 runs
one batch of 8 in loader 0 and there is no loader 2 (Lightning refuses empty sized loaders).

Three OnlineKNNs ("gather", and "shard" and "shard2" in shard mode) share the queues
("shard2" sweeps k = 3, 5 and T = 0.5, 1, and scores a clean bank too, 30 rows); the
shard-mode ones score at the end of the epoch (the batch counts differ, or iterable loaders
have no length), so only "gather" writes predictions into the batches. Each rank trains on
its own rows (rank r gets rows r, r + W, ...). Each rank saves the predictions and logged
values of every validation epoch, the bank of the last one, and its validation rows batch
by batch.

params: epochs, queue_length, labels (validation labels: "clean", or "unlabelled" to mark
every third row -1), loaders ("iterable": iterable datasets, or "sized": lists of batches).
"""

import lightning as L
import torch
from _common import DictDataset, Encoder, blobs, parse, save, trainer
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset
from torchmetrics.classification import MulticlassAccuracy

from spt_core import distributed
from spt_knn import OnlineKNN
from spt_queue import find_queue

args = parse()
p = {"epochs": 2, "queue_length": 12, "labels": "clean", "loaders": "iterable", **args.params}
SIZES = {  # loader -> rank -> batch sizes
    0: {0: [8, 8, 4], 1: []},
    1: {0: [8, 1], 1: [4, 8, 8, 1]},
    2: {0: [], 1: []},
}
if p["loaders"] == "sized":  # Lightning refuses a sized loader without any batch under DDP
    SIZES = {0: {0: [8, 8, 4], 1: [8]}, 1: {0: [8, 1], 1: [4, 8, 8, 1]}}
N_TRAIN = 64
N_VAL = sum(sum(sizes) for per_rank in SIZES.values() for sizes in per_rank.values())
features, labels = blobs(N_TRAIN + N_VAL, dim=4, classes=3)
train = DictDataset(features[:N_TRAIN], labels[:N_TRAIN])
val_x = features[N_TRAIN:] + 3 * torch.randn(N_VAL, 4, generator=torch.Generator().manual_seed(3))
val_y = labels[N_TRAIN:].clone()
if p["labels"] == "unlabelled":
    val_y[::3] = -1


def batches(loader: int, rank: int) -> list[dict[str, torch.Tensor]]:
    """This rank's validation batches of ``loader``: consecutive rows, no row used twice."""
    start = sum(sum(sizes) for lo in range(loader) for sizes in SIZES[lo].values())
    start += sum(sum(SIZES[loader][r]) for r in range(rank))
    out = []
    for size in SIZES[loader][rank]:
        rows = slice(start, start + size)
        out.append({"x": val_x[rows], "label": val_y[rows], "index": torch.arange(size)})
        start += size
    return out


class Batches(IterableDataset):  # no length: Lightning cannot tell the batch counts
    def __init__(self, loader: int, rank: int) -> None:
        self.loader, self.rank = loader, rank

    def __iter__(self):
        yield from batches(self.loader, self.rank)


class Model(Encoder):
    def train_dataloader(self):
        sampler = DistributedSampler(
            train, self.trainer.world_size, self.trainer.global_rank, shuffle=False
        )
        return DataLoader(train, batch_size=4, sampler=sampler)

    def val_dataloader(self):
        rank = self.trainer.global_rank
        if p["loaders"] == "sized":  # a list of batches: the counts are known, and differ
            return [DataLoader(batches(lo, rank), batch_size=None) for lo in SIZES]
        return [DataLoader(Batches(lo, rank), batch_size=None) for lo in SIZES]


class Keep(L.Callback):
    """Predictions and logged values of every validation epoch, and the last banks."""

    def __init__(self):
        self.preds, self.logged = [], []

    def on_validation_epoch_start(self, trainer, pl_module):
        self.preds.append({(mode, lo): [] for mode in MODES for lo in SIZES})

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, idx=0):
        for mode in MODES:
            self.preds[-1][(mode, idx)].append(batch.get(f"{mode}_preds"))

    def on_validation_epoch_end(self, trainer, pl_module):
        n = p["queue_length"]  # gather mode's bank: every rank's rows (collective)
        self.bank = distributed.gather_uneven(find_queue(trainer, "embedding").read(n))
        self.bank_labels = distributed.gather_uneven(find_queue(trainer, "label").read(n))

    def on_validation_end(self, trainer, pl_module):
        logged = trainer.callback_metrics
        self.logged.append({k: v.item() for k, v in logged.items() if k.startswith("eval/")})


MODES = ("gather", "shard", "shard2")


clean = DictDataset(*blobs(30, dim=4, classes=3))  # the same centres as the other rows
clean.features += torch.randn(30, 4, generator=torch.Generator().manual_seed(4))


def knn(name):
    # "shard2" sweeps k and T and adds a clean bank: deferred scoring of both banks.
    sweep = {"k": (3, 5), "temperature": (0.5, 1.0)} if name == "shard2" else {}
    return OnlineKNN(
        name,
        input="embedding",
        target="label",
        queue_length=p["queue_length"],
        metrics={"accuracy": MulticlassAccuracy(3, average="micro")},
        num_classes=3,
        **{"k": 5, "temperature": 0.5, **sweep},
        distributed="gather" if name == "gather" else "shard",
        clean_loader=DataLoader(clean, batch_size=4) if name == "shard2" else None,
    )


keep = Keep()
model = Model(in_dim=4)
fit = trainer(
    args,
    max_epochs=p["epochs"],
    callbacks=[knn("shard"), knn("gather"), knn("shard2"), keep],
    use_distributed_sampler=False,
)
fit.fit(model)
model.eval()
with torch.no_grad():
    embeddings = {
        lo: [model(b["x"]) for b in batches(lo, fit.global_rank)] for lo in SIZES
    }  # batch by batch: the products validation ran
save(
    args,
    fit,
    {
        "preds": keep.preds,
        "logged": keep.logged,
        "bank": keep.bank,
        "bank_labels": keep.bank_labels,
        "embeddings": embeddings,
        "labels": {lo: [b["label"] for b in batches(lo, fit.global_rank)] for lo in SIZES},
        "knn_holds_a_bank": [bool(getattr(cb, "_epochs", None)) for cb in fit.callbacks],
        "clean": (model(clean.features).detach(), clean.labels),
    },
)
