"""LatentViz on ranks with different rows, checkpointed mid-epoch and resumed there.

Each rank trains on its own rows (rank 1's spread wider, so the ranks' projection losses
differ), 8 batches per epoch through a loader Lightning can resume mid-epoch.

params: epochs, checkpoint_dir (a checkpoint every ``every_n_train_steps`` global steps),
every_n_train_steps, resume (checkpoint path to resume from).
"""

from _common import DictDataset, Encoder, blobs, parse, save, trainer
from _recording_viz import RecordingViz
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from spt_core.testing import ResumableLoader
from spt_latentviz import projection_mlp

ROWS, BATCH = 64, 8

args = parse()
p = {"epochs": 2, "every_n_train_steps": 12, **args.params}


class RankRows(Encoder):
    """The Encoder, each rank with its own rows and no distributed sampler."""

    def train_dataloader(self) -> DataLoader:
        features, labels = blobs(ROWS, dim=4, classes=4, seed=self.global_rank)
        data = DictDataset(features * (1 + self.global_rank), labels)
        return ResumableLoader(data, batch_size=BATCH)


viz = RecordingViz(
    "viz",
    "embedding",
    "label",
    projection_mlp(8, 16),
    queue_length=32,
    k_neighbors=5,
    update_interval=1,
    plot_interval=100,
)
# LatentViz creates its queues at setup, before ModelCheckpoint (which Lightning runs last),
# so the mid-epoch checkpoint holds the rows of the batch it was written at.
callbacks = [viz]
if p.get("checkpoint_dir"):
    callbacks.append(
        ModelCheckpoint(
            dirpath=p["checkpoint_dir"],
            filename="{step}",
            save_top_k=-1,
            every_n_train_steps=p["every_n_train_steps"],
        )
    )
fit = trainer(
    args,
    max_epochs=p["epochs"],
    callbacks=callbacks,
    enable_checkpointing=p.get("checkpoint_dir") is not None,
    use_distributed_sampler=False,
    log_every_n_steps=1,
    default_root_dir=str(args.out),
)
model = RankRows(in_dim=4, lr=0.01)
fit.fit(model, ckpt_path=p.get("resume"))
save(
    args,
    fit,
    {
        "logged": {k: float(v) for k, v in fit.callback_metrics.items() if "viz" in k},
        "losses": viz.losses,
        "seen": [batch.tolist() for batch in model.seen],
    },
)
