"""MetricsCallback in one process or under 2-process DDP, with uneven rows per rank.

Each rank trains on its own slice of the rows (``use_distributed_sampler=False``): 25 rows
split 14 / 11, batches of 5, so both ranks step 3 times but hold different row counts. The
validation loaders are uneven too, and the second one (an iterable without a length) is
empty on rank 1. One process sees
every row.

params: every_n_train_steps (default: values per epoch), epochs, save (checkpoint path
written after fit; before it, the last rank alone reads ``state_dict()``, which must not
communicate), resume (checkpoint path to resume the fit from), bad_label (put this label on
validation row 12, rank 1's only in loader 0, in a ``label`` column that only a third
callback, ``classes``, reads with a ``MulticlassAUROC(num_classes=2)``).
"""

import lightning as L
import numpy as np
import torch
from _common import parse, save, trainer
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, Subset, TensorDataset
from torchmetrics.classification import BinaryAUROC, MulticlassAUROC

from spt_metrics import MetricsCallback


def median_gap(score, target):
    """Median score of positives minus that of negatives: exact only over every row."""
    return float(np.median(score[target == 1]) - np.median(score[target == 0]))


def hit_rate(score, target):
    return float(((score > 0.5) == (target == 1)).mean())


def both_classes(outputs):
    """The score as the probabilities of two classes."""
    return torch.stack([1 - outputs["score"], outputs["score"]], dim=1)


def rows(n, seed):
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(2, (n,), generator=generator)
    score = (0.3 * target + torch.rand(n, generator=generator)).clamp(0, 1)
    return score, target


class Rows(IterableDataset):
    """Rows without a length, so that Lightning accepts a rank with none of them."""

    def __init__(self, data):
        self.data = data

    def __iter__(self):
        return iter(self.data)


class Scores(L.LightningModule):
    """Steps return fixed ``score``/``target`` columns; each rank reads its own slice."""

    def __init__(self, train, val, splits, labels):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))
        self.data = {"train": (*train, labels["train"]), "val": (*val, labels["val"])}
        self.splits = splits

    def _step(self, batch):
        score, target, label = batch
        outputs = {"loss": self.weight * score.mean(), "score": score, "target": target}
        return {**outputs, "label": label}

    def training_step(self, batch, batch_idx):
        return self._step(batch)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        return self._step(batch)

    def _slice(self, stage, which):
        data = TensorDataset(*self.data[stage])
        cut = self.splits[stage][which] if self.trainer.world_size > 1 else None
        if cut is not None:
            start, stop = cut[self.global_rank]
            data = Subset(data, range(start, stop))
        if which == 1:
            data = Rows(data)
        return DataLoader(data, batch_size=5 if stage == "train" else 4)

    def train_dataloader(self):
        return self._slice("train", 0)

    def val_dataloader(self):
        return [self._slice("val", 0), self._slice("val", 1)]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


args = parse()
p = {"epochs": 1, **args.params}
train, val = rows(25, seed=1), rows(13, seed=2)
labels = {"train": train[1].clone(), "val": val[1].clone()}
if "bad_label" in p:
    labels["val"][12] = p["bad_label"]
splits = {
    "train": [((0, 14), (14, 25))],
    "val": [((0, 9), (9, 13)), ((0, 13), (13, 13))],  # loader 1: empty on rank 1
}
steps = p.get("every_n_train_steps")
schedule = {"every_n_train_steps": steps} if steps else {"every_n_train_epochs": 1}
metrics = {"auroc": BinaryAUROC(), "gap": median_gap, "hit": hit_rate}
exact = MetricsCallback(
    metrics,
    needs={"auroc": ["score", "target"]},
    compute_per_training_step=False,
    compute_on_cpu=True,
    name="exact",
    **schedule,
)
per_step = MetricsCallback(
    {"hit": hit_rate},
    compute_per_training_step=True,
    compute_per_val_step=True,
    name="per_step",
    **schedule,
)
callbacks = [exact, per_step]
if "bad_label" in p:
    callbacks.append(
        MetricsCallback(
            {"auroc": MulticlassAUROC(num_classes=2)},
            needs={"auroc": {"preds": both_classes, "target": "label"}},
            name="classes",
        )
    )
fit = trainer(
    args,
    max_epochs=p["epochs"],
    callbacks=callbacks,
    use_distributed_sampler=False,
)
fit.fit(Scores(train, val, splits, labels), ckpt_path=p.get("resume"))
local_rows = None
if p.get("save"):
    if fit.global_rank == fit.world_size - 1:
        window = exact.state_dict()["train_window"]["metrics"]
        local_rows = sum(len(rows) for rows in window["gap"]["kwarg_score"])
    fit.save_checkpoint(p["save"])
save(
    args,
    fit,
    {
        "logged": {key: float(value) for key, value in fit.callback_metrics.items()},
        "train": [t.numpy() for t in train],
        "val": [t.numpy() for t in val],
        "local_window_rows": local_rows,
    },
)
