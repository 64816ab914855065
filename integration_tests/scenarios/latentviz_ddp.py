"""LatentViz in a real fit (DDP when --devices 2): train, draw, score, checkpoint, resume.

params: n, batch_size, queue_length, epochs, checkpoint_dir (save a checkpoint after every
epoch there), resume (checkpoint path to resume from).
"""

import os
from pathlib import Path

from _common import DictDataset, Encoder, blobs, loader, parse, save, trainer
from _recording_viz import RecordingViz
from lightning.pytorch.callbacks import ModelCheckpoint

from spt_core import distributed
from spt_latentviz import load_map, projection_mlp

args = parse()
p = {"n": 128, "batch_size": 8, "queue_length": 32, "epochs": 2, **args.params}
features, labels = blobs(p["n"], dim=4, classes=4)
data = DictDataset(features, labels)
# One folder per process (LOCAL_RANK is set for the ranks the launcher starts): shows which
# rank wrote files.
maps = Path(args.out) / f"maps_rank{os.environ.get('LOCAL_RANK', '0')}"


viz = RecordingViz(
    "viz",
    "embedding",
    "label",
    projection_mlp(8, 16),
    queue_length=p["queue_length"],
    k_neighbors=5,
    update_interval=2,
    plot_interval=1,
    save_dir=maps,
)
callbacks = [viz]
if p.get("checkpoint_dir"):
    callbacks.append(
        ModelCheckpoint(
            dirpath=p["checkpoint_dir"],
            filename="{epoch}",
            save_top_k=-1,
            every_n_epochs=1,
            save_on_train_epoch_end=True,
        )
    )
fit = trainer(
    args,
    max_epochs=p["epochs"],
    callbacks=callbacks,
    enable_checkpointing=len(callbacks) > 1,
    log_every_n_steps=2,
)
model = Encoder(in_dim=4)
batches = loader(data, p["batch_size"])
fit.fit(model, batches, loader(data, p["batch_size"]), ckpt_path=p.get("resume"))
queue, label_queue = viz._input_queue, viz._target_queue
# Every rank's rows, gathered by the reader (collective: the same order on every rank).
snapshot = distributed.gather_uneven(queue.read(p["queue_length"]))
label_snapshot = distributed.gather_uneven(label_queue.read(p["queue_length"]))
# state_dict() never communicates: one rank alone may call it (a collective would hang).
own_generators = viz.state_dict()["latent_viz"]["generators"] if fit.global_rank == 1 else None
last = p["epochs"] - 1
saved = load_map(maps / f"epoch_{last:04d}.npz") if fit.is_global_zero else None
save(
    args,
    fit,
    {
        "projection": {k: v.clone() for k, v in viz.projection.state_dict().items()},
        "optimizer_steps": viz.optimizer_steps,
        "train_batches": viz.train_batches,
        "own_rows": queue.read(p["queue_length"]),
        "snapshot": snapshot,
        "label_snapshot": label_snapshot,
        "projected_snapshot": viz.project(snapshot),
        "logged": {k: float(v) for k, v in fit.callback_metrics.items() if "viz" in k},
        "losses": viz.losses,
        "files": sorted(p.name for p in maps.iterdir()) if maps.exists() else [],
        "saved": saved,
        "own_generators": own_generators,
    },
)
