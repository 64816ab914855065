"""OnlineProbe, LatentViz and MetricsCallback under DDP when one rank runs no validation batch.

The validation loader is an iterable dataset (no length, so Lightning cannot see that the
ranks differ) that yields whole batches: rank ``1 - empty`` runs three batches of 8 rows,
rank ``empty`` none. Training is even: rank r trains on rows r, r + W, ... (batches of 4).

Callbacks, in this order: OnlineProbe "lin" (online probe only), OnlineProbe "pc" (with a
clean evaluation every epoch), LatentViz "map" (a map every epoch), MetricsCallback "metrics"
(``acc``: torchmetrics accuracy of "lin"'s predictions, which "lin" writes into the batch;
``mean``: a plain function in exact mode, whose list states the empty rank must fill with
zero rows; ``rankme``: a float64 sum-state Metric).

Each rank saves, per validation epoch, the backbone and both online probes as validation
used them, and the queue rows LatentViz maps (every rank's, gathered); and, once, what its
`RecordingLogger` received, its validation batches and the clean rows. Rank 0 also saves the
map files.

params: epochs, empty (the rank without a validation batch).
"""

import warnings

import lightning as L
import torch
from _common import DictDataset, Encoder, blobs, parse, save, trainer
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset
from torchmetrics.classification import MulticlassAccuracy

from spt_core import callbacks_modules, distributed
from spt_core.testing import RecordingLogger
from spt_latentviz import LatentViz, load_map
from spt_metrics import MetricsCallback, RankMe
from spt_probe import OnlineProbe
from spt_queue import find_queue

args = parse()
p = {"epochs": 2, "empty": 1, **args.params}
N_TRAIN, N_VAL, VAL_BATCH, QUEUE, CLEAN_EPOCHS, CLEAN_BATCH = 64, 24, 8, 32, 10, 8
CLEAN_OPTIMIZER = {"type": "AdamW", "lr": 0.05}
features, labels = blobs(N_TRAIN + N_VAL, dim=4, classes=3)
train = DictDataset(features[:N_TRAIN], labels[:N_TRAIN])
noise = 3 * torch.randn(N_VAL, 4, generator=torch.Generator().manual_seed(3))
val_x, val_y = features[N_TRAIN:] + noise, labels[N_TRAIN:]
clean_noise = 0.5 * torch.randn(30, 4, generator=torch.Generator().manual_seed(4))
clean = DictDataset(features[:30] + clean_noise, labels[:30])  # unaugmented training rows


def val_batches(rank: int) -> list[dict[str, torch.Tensor]]:
    """This rank's validation batches: every row on one rank, none on rank ``empty``."""
    if rank == p["empty"]:
        return []
    return [
        {"x": x, "label": y}
        for x, y in zip(val_x.split(VAL_BATCH), val_y.split(VAL_BATCH), strict=True)
    ]


class Batches(IterableDataset):
    def __init__(self, rank: int) -> None:
        self.rank = rank

    def __iter__(self):
        yield from val_batches(self.rank)


class Model(Encoder):
    def train_dataloader(self):
        world, rank = self.trainer.world_size, self.trainer.global_rank
        return DataLoader(
            train, batch_size=4, sampler=DistributedSampler(train, world, rank, False)
        )

    def val_dataloader(self):
        return DataLoader(Batches(self.trainer.global_rank), batch_size=None)


def clone(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class Keep(L.Callback):
    """What each validation epoch evaluated with, and the rows LatentViz mapped."""

    def __init__(self) -> None:
        self.epochs: list[dict] = []

    def on_validation_epoch_start(self, trainer, pl_module):
        modules = callbacks_modules(pl_module)
        self.epochs.append(
            {
                "epoch": trainer.current_epoch,
                "backbone": clone(pl_module),
                "lin": clone(modules["lin"]),
                "pc": clone(modules["pc"]),
            }
        )

    def on_validation_epoch_end(self, trainer, pl_module):
        # Collective, the same on every rank: the rows of both ranks' queues, rank order.
        queue = find_queue(trainer, "embedding")
        self.epochs[-1]["map_rows"] = distributed.gather_uneven(queue.read(QUEUE))


def accuracy() -> MulticlassAccuracy:
    return MulticlassAccuracy(3, average="micro")


callbacks = [
    OnlineProbe(
        name="lin", input="embedding", target="label", probe=nn.Linear(8, 3), metrics=accuracy()
    ),
    OnlineProbe(
        name="pc",
        input="embedding",
        target="label",
        probe=nn.Linear(8, 3),
        metrics=accuracy(),
        clean_loader=DataLoader(clean, batch_size=10),
        clean_every_n_epochs=1,
        clean_epochs=CLEAN_EPOCHS,
        clean_batch_size=CLEAN_BATCH,
        clean_optimizer=CLEAN_OPTIMIZER,
    ),
    LatentViz(
        "map",
        "embedding",
        "label",
        nn.Linear(8, 2),
        queue_length=QUEUE,
        k_neighbors=3,
        update_interval=1,
        plot_interval=1,
        save_dir=str(args.out / "maps"),
    ),
    MetricsCallback(
        {
            "acc": accuracy(),
            "mean": lambda embedding: float(embedding.mean()),
            "rankme": RankMe(num_features=8),
        },
        needs={"acc": {"preds": "lin_preds", "target": "label"}, "rankme": ["embedding"]},
        every_n_train_steps=None,
    ),
    Keep(),
]
logger = RecordingLogger()
fit = trainer(
    args,
    max_epochs=p["epochs"],
    callbacks=callbacks,
    logger=logger,
    use_distributed_sampler=False,
)
with warnings.catch_warnings(record=True) as caught:
    fit.fit(Model(in_dim=4))
maps = [load_map(args.out / "maps" / f"epoch_{e:04d}.npz") for e in range(p["epochs"])]
save(
    args,
    fit,
    {
        "records": logger.records,
        "epochs": callbacks[-1].epochs,
        "val": val_batches(fit.global_rank),
        "clean": (clean.features, clean.labels),
        "maps": maps if fit.is_global_zero else None,
        "warnings": [str(w.message) for w in caught],
    },
)
