"""Checkpoint every spt callback mid-training and resume in a new Trainer: the last epoch's
logged values and every callback's state equal those of the uninterrupted fit."""

import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from spt_core import SPTCallback
from spt_latentviz import load_map

sys.path.insert(0, str(Path(__file__).parent / "scenarios"))  # e2e_setup, shared with scenarios
import e2e_setup as e2e


def fit(tmp_path, name, epochs, resume=None, every_n_train_steps=None):
    """A fresh model, data and callbacks; a checkpoint after every epoch, or every
    ``every_n_train_steps`` steps through a loader that resumes mid-epoch (one folder for both
    fits: the resumed one rewrites the later files)."""
    L.seed_everything(0, verbose=False)
    spt = e2e.callbacks(save_dir=tmp_path / name / "maps")
    if every_n_train_steps is None:
        # After every callback's epoch-end hook.
        when = {"every_n_epochs": 1, "save_on_train_epoch_end": True, "filename": "{epoch}"}
    else:
        when = {"every_n_train_steps": every_n_train_steps, "filename": "{step}"}
    saver = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_top_k=-1, **when)
    trainer = e2e.make_trainer(
        max_epochs=epochs,
        callbacks=[*spt, saver],
        enable_checkpointing=True,
    )
    model = e2e.Backbone()
    rows = e2e.Rows(batch_size=8, resumable=every_n_train_steps is not None)
    trainer.fit(model, datamodule=rows, ckpt_path=resume)
    states = {
        callback.state_key: callback.state_dict()
        for callback in trainer.callbacks
        if isinstance(callback, SPTCallback)  # the auto-created queues included
    }
    return e2e.logged(trainer), states, model.state_dict()


def test_resumed_fit_logs_and_holds_what_the_uninterrupted_fit_does(tmp_path):
    straight_logged, straight_states, straight_model = fit(tmp_path, "straight", epochs=3)
    checkpoint = tmp_path / "checkpoints" / "epoch=0.ckpt"  # the resumed fit runs 2 epochs
    resumed_logged, resumed_states, resumed_model = fit(tmp_path, "resumed", 3, checkpoint)

    assert set(e2e.REQUIRED) <= set(straight_logged)
    assert resumed_logged == straight_logged  # values of the last epoch, bit for bit
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
    maps = [load_map(tmp_path / run / "maps" / "epoch_0002.npz") for run in ("straight", "resumed")]
    assert (maps[0]["coordinates"] == maps[1]["coordinates"]).all()


def test_a_fit_resumed_mid_epoch_logs_and_holds_what_the_uninterrupted_fit_does(tmp_path):
    """The checkpoint after 4 of epoch 1's 8 batches holds the queues' rows, the probes'
    running losses, metric states and accumulation windows, LatentViz's loss so far and
    MetricsCallback's open window: the resumed epoch logs the uninterrupted epoch's values."""
    straight_logged, straight_states, straight_model = fit(tmp_path, "straight", 2, None, 4)
    checkpoint = tmp_path / "checkpoints" / "step=12.ckpt"
    resumed_logged, resumed_states, resumed_model = fit(tmp_path, "resumed", 2, checkpoint, 4)

    assert set(e2e.REQUIRED) <= set(straight_logged)
    assert resumed_logged == straight_logged  # epoch 1's values, bit for bit
    e2e.assert_same(resumed_model, straight_model, "backbone")
    e2e.assert_same(resumed_states, straight_states)
