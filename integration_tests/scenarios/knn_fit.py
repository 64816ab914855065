"""OnlineKNN in a real single-process fit; saves what it logged, its bank and the validation
embeddings so that a test can recompute the values offline.

params: n, batch_size, queue_length, epochs, loaders (1 or 2 validation loaders), weighting,
metric, reuse (fit a second Trainer with the same OnlineKNN), save (checkpoint path written
after the first epoch), resume (checkpoint path to resume from).
"""

import lightning as L
import torch
from _common import DictDataset, Encoder, blobs, loader, parse, save, trainer
from torchmetrics.classification import MulticlassAccuracy

from spt_knn import OnlineKNN
from spt_queue import find_queue

args = parse()
p = {
    "n": 96,
    "batch_size": 8,
    "queue_length": 40,
    "epochs": 1,
    "loaders": 1,
    "weighting": "inverse",
    "metric": "euclidean",
    "reuse": False,
    **args.params,
}
features, labels = blobs(p["n"] + 48, dim=4, classes=3)
train = DictDataset(features[: p["n"]], labels[: p["n"]])
noise = torch.randn(48, 4, generator=torch.Generator().manual_seed(7))
validation = [  # noisy copies of held-out rows, so accuracies are far from 1
    DictDataset(features[p["n"] : p["n"] + 24] + 2 * noise[:24], labels[p["n"] : p["n"] + 24]),
    DictDataset(features[p["n"] + 24 :] + 4 * noise[24:], labels[p["n"] + 24 :]),
][: p["loaders"]]


class Logged(L.Callback):
    """The eval/ values visible after each validation epoch, and the last bank."""

    def __init__(self):
        self.epochs = []

    def on_validation_epoch_end(self, trainer, pl_module):
        n = p["queue_length"]
        self.bank = find_queue(trainer, "embedding").read(n)
        self.bank_labels = find_queue(trainer, "label").read(n)

    def on_validation_end(self, trainer, pl_module):
        logged = trainer.callback_metrics
        self.epochs.append({k: v.item() for k, v in logged.items() if k.startswith("eval/")})


class SaveAfterFirstEpoch(L.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        if p.get("save") and trainer.current_epoch == 0:
            trainer.save_checkpoint(p["save"])


def observe(fit, model, logged):
    """What a test needs to recompute the last validation epoch offline."""
    model.eval()
    with torch.no_grad():
        embeddings = [  # batch by batch: the same products as validation
            torch.cat([model(x) for x in data.features.split(p["batch_size"])])
            for data in validation
        ]
    return {
        "logged": logged.epochs,
        "bank": logged.bank,
        "bank_labels": logged.bank_labels,
        "embeddings": embeddings,
        "labels": [data.labels for data in validation],
    }


knn = OnlineKNN(
    "knn",
    input="embedding",
    target="label",
    queue_length=p["queue_length"],
    metrics={"accuracy": MulticlassAccuracy(3, average="micro")},
    num_classes=3,
    k=5,
    temperature=0.5,
    distance_metric=p["metric"],
    weighting=p["weighting"],
)
model = Encoder(in_dim=4)
logged = Logged()
fit = trainer(args, max_epochs=p["epochs"], callbacks=[knn, logged, SaveAfterFirstEpoch()])
val_loaders = [loader(data, p["batch_size"]) for data in validation]
fit.fit(model, loader(train, p["batch_size"]), val_loaders, ckpt_path=p.get("resume"))
result = {"first": observe(fit, model, logged)}
if p["reuse"]:
    logged_again = Logged()
    second = trainer(args, max_epochs=1, callbacks=[knn, logged_again])
    second.fit(model, loader(train, p["batch_size"]), val_loaders)
    result["second"] = observe(second, model, logged_again)
    result["second_queue_is_first"] = find_queue(second, "embedding") is find_queue(
        fit, "embedding"
    )
save(args, fit, result)
