"""All spt callbacks on one fit, in one process or under DDP, over the same global batches.

Every loader is sharded without shuffling (rank r takes rows r, r + W, ...), so W ranks with
batches of ``8 // W`` rows see the global batches one process sees with batches of 8, and W
queues of ``32 // W`` rows hold the rows of one queue of 32.

Saves, per rank: the logged values, every validation row's predictions (by row index) from
the last validation epoch, the backbone, probe and projection weights, every rank's queue rows
(the kNN bank, with the row index of each bank row) and their LatentViz projection.

params: epochs, seed, checkpoints (a folder: a checkpoint after every epoch, or every
``every_n_train_steps`` steps through a training loader that resumes mid-epoch), resume (a
checkpoint to resume from; give the same ``every_n_train_steps``), faults: on the last rank
only, a NaN feature in a validation row in epoch 0 and the label 5 in epoch 1; the fit then
fails, and each rank saves the error and what was logged after each validation epoch instead.
"""

import lightning as L
from _common import parse, save
from e2e_setup import Backbone, Faulty, Rows, callbacks, logged, make_trainer, nan_row, relabel
from lightning.pytorch.callbacks import ModelCheckpoint

from spt_core import distributed
from spt_queue import OnlineQueue, find_queue

args = parse()
p = {"epochs": 2, **args.params}
batch_size, queue_length = 8 // args.devices, 32 // args.devices
PREDICTIONS = ("knn_preds", "linear_preds", "mlp_preds")


class KeepPredictions(L.Callback):
    """The predictions each callback wrote into the validation batches, by row index, and
    what was logged after each validation epoch."""

    def __init__(self):
        self.logged = []  # after each validation epoch

    def on_validation_epoch_start(self, trainer, pl_module):
        self.rows = {key: {} for key in PREDICTIONS}

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, idx=0):
        for key in PREDICTIONS:
            for i, row in zip(batch["index"].tolist(), batch[key], strict=True):
                self.rows[key][i] = row.float().clone()

    def on_validation_end(self, trainer, pl_module):
        self.logged.append(logged(trainer))


spt = callbacks(queue_length, save_dir=args.out / "maps")
keep = KeepPredictions()
indices = OnlineQueue("index", queue_length)


def last_rank_faults(model, stage, batch, out):
    if model.global_rank != model.trainer.world_size - 1:
        return out
    fault = nan_row("val", 1) if model.current_epoch == 0 else relabel("val", 1, 5)
    return fault(model, stage, batch, out)


model = Faulty(last_rank_faults) if p.get("faults") else Backbone()
saver, steps = [], p.get("every_n_train_steps")
if p.get("checkpoints") and steps:  # mid-epoch, through a loader that resumes there
    saver.append(
        ModelCheckpoint(p["checkpoints"], "{step}", save_top_k=-1, every_n_train_steps=steps)
    )
elif p.get("checkpoints"):
    saver.append(
        ModelCheckpoint(p["checkpoints"], "{epoch}", save_top_k=-1, save_on_train_epoch_end=True)
    )
fit = make_trainer(
    args.devices,
    max_epochs=p["epochs"],
    callbacks=[*spt, indices, keep, *saver],
    use_distributed_sampler=False,
    enable_checkpointing=bool(saver),
)
if p.get("faults"):
    try:
        fit.fit(model, datamodule=Rows(batch_size))
    except ValueError as error:
        save(args, fit, {"error": str(error), "logged": keep.logged})
        raise SystemExit(0) from None
    raise AssertionError("the bad label did not stop the fit")
fit.fit(model, datamodule=Rows(batch_size, resumable=bool(steps)), ckpt_path=p.get("resume"))
knn, linear, mlp, viz, metrics = spt
# Every rank's rows, gathered by the reader (collective: the same queues in the same order on
# every rank).
bank, bank_labels, bank_index = (
    distributed.gather_uneven(queue.read(queue_length))
    for queue in (find_queue(fit, "embedding"), find_queue(fit, "label"), indices)
)
save(
    args,
    fit,
    {
        "logged": logged(fit),
        "predictions": keep.rows,
        "backbone": {k: v.clone() for k, v in model.state_dict().items()},
        "probes": {
            probe.name: {k: v.clone() for k, v in probe.module.state_dict().items()}
            for probe in (linear, mlp)
        },
        "probe_steps": [linear.optimizer_steps, mlp.optimizer_steps],
        # kNN and LatentViz share these queues: the bank is also the drawn map's rows.
        "bank": bank,
        "bank_labels": bank_labels,
        "bank_index": bank_index,
        "projection": {k: v.clone() for k, v in viz.projection.state_dict().items()},
        "projected_bank": viz.project(bank),
        "viz_steps": viz.optimizer_steps,
        "counters": [metrics.train_batches, metrics.train_epochs, metrics.val_runs],
    },
)
