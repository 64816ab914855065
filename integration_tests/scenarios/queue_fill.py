"""Fill OnlineQueues from a real fit; optionally checkpoint, or resume from a checkpoint.

params: n, batch_size, queue_length, epochs, shuffle, save (checkpoint path written after
fit), resume (checkpoint path to resume from).
"""

import lightning as L
from _common import DictDataset, Encoder, blobs, loader, parse, save, trainer

from spt_core import distributed
from spt_queue import OnlineQueue

args = parse()
p = {"n": 64, "batch_size": 8, "queue_length": 20, "epochs": 1, "shuffle": False, **args.params}
features, labels = blobs(p["n"], dim=4, classes=3)
data = DictDataset(features, labels)
model = Encoder(in_dim=4)
indices = OnlineQueue("index", p["queue_length"])
embeddings = OnlineQueue("embedding", p["queue_length"], dim=8)


class Snapshot(L.Callback):
    """Every rank's index rows at the last validation epoch, gathered by the reader."""

    def on_validation_epoch_end(self, trainer, pl_module):
        self.rows = distributed.gather_uneven(indices.read())


snapshot = Snapshot()
fit = trainer(args, max_epochs=p["epochs"], callbacks=[indices, embeddings, snapshot])
fit.fit(
    model,
    loader(data, p["batch_size"], shuffle=p["shuffle"]),
    loader(data, p["batch_size"]),
    ckpt_path=p.get("resume"),
)
if p.get("save"):
    fit.save_checkpoint(p["save"])
save(
    args,
    fit,
    {
        "rows": indices.read(),
        "snapshot": snapshot.rows,
        "queue_state": sorted(vars(indices)),
        "embeddings": embeddings.read(),
        "appended": indices.appended,
        "seen": model.seen,
    },
)
