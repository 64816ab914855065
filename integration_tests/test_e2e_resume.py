"""Checkpoint every spt callback during training and resume in a new Trainer: everything
logged from the resume on and every callback's final state equal the uninterrupted fit's.

Four places a checkpoint is written: after every callback's ``on_train_epoch_end``; at
validation end, before ``on_train_epoch_end`` (``ModelCheckpoint(save_on_train_epoch_end=False)``,
Lightning's choice too when validation runs more than once per epoch or not every epoch),
which Lightning runs on resume; after an epoch's last batch, before its validation and
``on_train_epoch_end``, which Lightning skips on resume (the callbacks replay their effects);
and in the middle of an epoch, through a training loader that resumes there.
"""

import sys
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint

from spt_core import SPTCallback
from spt_core.testing import RecordingLogger
from spt_latentviz import load_map

sys.path.insert(0, str(Path(__file__).parent / "scenarios"))  # e2e_setup, shared with scenarios
import e2e_setup as e2e

EPOCH_END = {"every_n_epochs": 1, "save_on_train_epoch_end": True, "filename": "{epoch}"}
CHECKPOINTS = {  # ModelCheckpoint settings, the file resumed from (8 batches per epoch)
    "after_epoch_end_hooks": (EPOCH_END, "epoch=0.ckpt"),
    "at_validation_end": (
        {"save_on_train_epoch_end": False, "filename": "{epoch}"},
        "epoch=0.ckpt",
    ),
    "after_last_batch": ({"every_n_train_steps": 8, "filename": "{step}"}, "step=8.ckpt"),
    "mid_epoch": ({"every_n_train_steps": 4, "filename": "{step}"}, "step=12.ckpt"),
}


class FolderCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint keyed by its folder too, so that several can save in one fit."""

    @property
    def state_key(self) -> str:
        return f"{super().state_key}[{self.dirpath}]"


def fit(root, name, savers, resume=None):
    """A fresh model, data and callbacks over 3 epochs, with ``savers``: ``{folder: when}``
    (the resumed fit rewrites the later files of its folder)."""
    L.seed_everything(0, verbose=False)
    spt = e2e.callbacks(save_dir=root / name / "maps")
    checkpoints = [
        FolderCheckpoint(dirpath=root / folder, save_top_k=-1, **when)
        for folder, when in savers.items()
    ]
    logger = RecordingLogger()
    trainer = e2e.make_trainer(
        max_epochs=3, callbacks=[*spt, *checkpoints], enable_checkpointing=True, logger=logger
    )
    model = e2e.Backbone()
    trainer.fit(model, datamodule=e2e.Rows(batch_size=8, resumable=True), ckpt_path=resume)
    states = {
        callback.state_key: callback.state_dict()
        for callback in trainer.callbacks
        if isinstance(callback, SPTCallback)  # the auto-created queues included
    }
    return logger.records, e2e.logged(trainer), states, model.state_dict()


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """One uninterrupted fit that writes the checkpoints of every case (writing one changes
    nothing in the fit)."""
    root = tmp_path_factory.mktemp("straight")
    savers = {where: when for where, (when, _) in CHECKPOINTS.items()}
    return root, fit(root, "straight", savers)


@pytest.mark.parametrize("where", CHECKPOINTS)
def test_resumed_fit_logs_and_holds_what_the_uninterrupted_fit_does(straight, tmp_path, where):
    root, (straight_records, straight_logged, straight_states, straight_model) = straight
    when, file = CHECKPOINTS[where]
    resumed_records, resumed_logged, resumed_states, resumed_model = fit(
        tmp_path, "resumed", {where: when}, root / where / file
    )

    assert set(e2e.REQUIRED) <= set(straight_logged)
    assert resumed_logged == straight_logged  # values of the last epoch, bit for bit
    # Every value logged from the resume on, at the same steps.
    assert resumed_records
    assert resumed_records == straight_records[-len(resumed_records) :]
    e2e.assert_same(resumed_model, straight_model, "backbone")

    # kNN and LatentViz queues, probe weights with their optimizer, scheduler and random
    # stream, the projection and its negative-sampling generator, the metric counters.
    assert set(resumed_states) == {
        "OnlineKNN[name=knn]",
        "OnlineProbe[name=linear]",
        "OnlineProbe[name=mlp]",
        "LatentViz[name=viz]",
        "MetricsCallback[name=metrics]",
        "OnlineQueue[name=embedding]",
        "OnlineQueue[name=label]",
    }
    e2e.assert_same(resumed_states, straight_states)
    assert straight_states["OnlineQueue[name=embedding]"]["appended"] == 3 * e2e.TRAIN_ROWS
    assert straight_states["MetricsCallback[name=metrics]"]["train_epochs"] == 3
    # The resumed fit drew the maps of the epochs it ran, the same as the uninterrupted one.
    drawn = sorted(p.name for p in (tmp_path / "resumed" / "maps").glob("*.npz"))
    assert drawn == ["epoch_0001.npz", "epoch_0002.npz"]
    maps = [
        load_map(r / run / "maps" / "epoch_0002.npz")
        for r, run in ((root, "straight"), (tmp_path, "resumed"))
    ]
    assert (maps[0]["coordinates"] == maps[1]["coordinates"]).all()
