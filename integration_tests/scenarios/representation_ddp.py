"""The representation Metrics in one process or under 2-process DDP, with uneven rows per rank.

Steps return two views ``z1``/``z2`` of fixed embeddings. Each rank trains on its own slice of
25 rows (14 / 11, ``use_distributed_sampler=False``, batches of 5); the validation loader (an
iterable without a length) gives rank 0 all 13 rows and rank 1 none. The Metrics run in two
places: inside a ``MetricsCallback`` (train and val values), and as submodules of the
LightningModule, updated in ``validation_step`` and computed in ``on_validation_epoch_end``,
where the rank without rows must still join the sync. One process sees every row.

params: dim (default 5).
"""

import lightning as L
import torch
from _common import parse, save, trainer
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, Subset, TensorDataset

from spt_metrics import (
    Alignment,
    DimsForEnergy,
    EffectiveRank,
    EmbeddingStd,
    LiDAR,
    MeanCosineSimilarity,
    MetricsCallback,
    RankMe,
    Uniformity,
)

TRAIN_SPLIT = ((0, 14), (14, 25))
VAL_SPLIT = ((0, 13), (13, 13))
TWO_VIEWS = ("align", "unif", "unif4", "lidar")


def metrics(dim):
    return {
        "rankme": RankMe(dim),
        "erank": EffectiveRank(dim),
        "dims": DimsForEnergy(dim, energy=0.9),
        "std": EmbeddingStd(dim),
        "cos": MeanCosineSimilarity(dim),
        "align": Alignment(),
        "unif": Uniformity(dim, max_rows=32),  # more than any rank's rows: exact
        "unif4": Uniformity(dim, max_rows=4),  # the 4 most recent rows of each rank
        "lidar": LiDAR(dim),
    }


def arguments(name, z1, z2):
    return (z1, z2) if name in TWO_VIEWS else (z1,)


def views(n, dim, seed):
    generator = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, dim, generator=generator) * torch.linspace(0.2, 2.0, dim)
    return z1, z1 + 0.3 * torch.randn(n, dim, generator=generator)


class Rows(IterableDataset):
    """Rows without a length, so that Lightning accepts a rank with none of them."""

    def __init__(self, data):
        self.data = data

    def __iter__(self):
        return iter(self.data)


class TwoViews(L.LightningModule):
    def __init__(self, train, val, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))
        self.data = {"train": train, "val": val}
        self.own = nn.ModuleDict(metrics(dim))
        self.own_values = {}

    def _step(self, batch):
        z1, z2 = batch
        return {"loss": self.weight * z1.mean(), "z1": z1, "z2": z2}

    def training_step(self, batch, batch_idx):
        return self._step(batch)

    def validation_step(self, batch, batch_idx):
        z1, z2 = batch
        for name, metric in self.own.items():
            metric.update(*arguments(name, z1, z2))
        return self._step(batch)

    def on_validation_epoch_end(self):
        self.own_values = {name: float(metric.compute()) for name, metric in self.own.items()}
        for metric in self.own.values():
            metric.reset()

    def _loader(self, stage, split):
        data = TensorDataset(*self.data[stage])
        if self.trainer.world_size > 1:
            data = Subset(data, range(*split[self.global_rank]))
        return DataLoader(Rows(data) if stage == "val" else data, batch_size=5)

    def train_dataloader(self):
        return self._loader("train", TRAIN_SPLIT)

    def val_dataloader(self):
        return self._loader("val", VAL_SPLIT)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


args = parse()
dim = args.params.get("dim", 5)
train, val = views(25, dim, seed=1), views(13, dim, seed=2)
needs = {name: ["z1", "z2"] if name in TWO_VIEWS else ["z1"] for name in metrics(dim)}
callback = MetricsCallback(
    metrics(dim), needs=needs, every_n_train_epochs=1, every_n_val_epochs=1, name="repr"
)
fit = trainer(args, max_epochs=1, callbacks=[callback], use_distributed_sampler=False)
module = TwoViews(train, val, dim)
fit.fit(module)
save(
    args,
    fit,
    {
        "logged": {key: float(value) for key, value in fit.callback_metrics.items()},
        "own": module.own_values,
        "train": train,
        "val": val,
    },
)
