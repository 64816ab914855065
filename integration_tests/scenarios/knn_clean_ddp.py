"""OnlineKNN's clean bank (``clean_loader``) on a real fit where one rank has no clean batch.

params: n (training and validation rows), n_clean (clean rows), clean_batch (rows per clean
batch: rank r of W embeds clean batches r, r + W, ..., so one batch leaves rank 1 none),
batch_size, epochs, every (clean_every_n_epochs), twins (the clean rows are n_clean / 2 rows
twice, the second copy labelled with the next class, so neighbours tie exactly).

Two callbacks score the validation rows against the clean bank only (``queue_length=0``):
"gather" and "shard" (``distributed=``), each with a ``clean_embed`` that counts the clean
batches its rank embedded. The result holds, per callback, the epochs and values of every
``eval/{name}_clean_*`` logged, the clean batches embedded, the final backbone and the data.
"""

import torch
from _common import DictDataset, Encoder, blobs, parse, save, trainer
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassAccuracy

from spt_core.testing import RecordingLogger
from spt_knn import OnlineKNN

args = parse()
p = {
    "n": 48, "n_clean": 30, "clean_batch": 30, "batch_size": 4, "epochs": 3, "every": 2,
    **args.params,
}  # fmt: skip
data = DictDataset(*blobs(p["n"], dim=4, classes=3))
clean = DictDataset(*blobs(p["n_clean"], dim=4, classes=3, seed=7))
if p.get("twins"):  # every clean row twice, the second half with the next label: exact ties
    half = DictDataset(*blobs(p["n_clean"] // 2, dim=4, classes=3, seed=7))
    clean = DictDataset(half.features.repeat(2, 1), torch.cat([half.labels, (half.labels + 1) % 3]))
MODES = ("gather", "shard")
embedded = dict.fromkeys(MODES, 0)


def counting(mode: str):
    def clean_embed(pl_module, batch):
        embedded[mode] += 1
        return pl_module(batch["x"])

    return clean_embed


callbacks = [
    OnlineKNN(
        mode,
        "embedding",
        "label",
        0,
        MulticlassAccuracy(3, average="micro"),
        num_classes=3,
        k=5,
        temperature=0.5,
        distributed=mode,
        clean_loader=DataLoader(clean, batch_size=p["clean_batch"]),
        clean_every_n_epochs=p["every"],
        clean_embed=counting(mode),
    )
    for mode in MODES
]
logger = RecordingLogger()
model = Encoder(in_dim=4)
fit = trainer(args, max_epochs=p["epochs"], callbacks=callbacks, logger=logger)
fit.fit(model, DataLoader(data, batch_size=p["batch_size"], shuffle=True),
        DataLoader(data, batch_size=p["batch_size"]))  # fmt: skip


def logged(name: str) -> list[tuple[int, float]]:
    return [(int(m["epoch"]), m[name]) for _, m in logger.records if name in m]


save(
    args,
    fit,
    {
        "logged": {
            mode: {
                what: logged(f"eval/{mode}_clean_{what}")
                for what in ("accuracy", "bank_rows", "bank_classes")
            }
            for mode in MODES
        },
        "embedded": dict(embedded),
        "states": {mode: knn.state_dict() for mode, knn in zip(MODES, callbacks, strict=True)},
        "backbone": {k: v.clone() for k, v in model.state_dict().items()},
        "clean": (clean.features, clean.labels),
        "val": (data.features, data.labels),
    },
)
