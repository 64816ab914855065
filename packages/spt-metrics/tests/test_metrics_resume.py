"""Checkpoint + resume: counters and the open training window continue where they stopped."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torchmetrics.classification import MulticlassAccuracy

from spt_core.testing import ResumableLoader
from spt_metrics import MetricsCallback


def hits(preds, target):
    return float((preds.argmax(-1) == target).mean())


def callbacks():
    metrics = {"acc": MulticlassAccuracy(num_classes=3, average="micro"), "hits": hits}
    return [
        # 3 training batches per epoch, a window of 4: the checkpoint after epoch 1 holds an
        # open window of 3 batches, which the first value after the resume must include.
        MetricsCallback(metrics, every_n_train_steps=4, every_n_val_epochs=2),
        MetricsCallback(
            {"hits": hits},
            compute_per_training_step=False,
            every_n_train_steps=4,
            every_n_val_epochs=2,
            name="exact",
        ),
    ]


def fit(harness, epochs, ckpt_path=None, save=None):
    train = harness.classification(10, 3, correct=0.5, seed=20)
    val = harness.classification(9, 3, correct=0.3, seed=21)
    pair = callbacks()
    trainer = harness.make_trainer(pair, max_epochs=epochs)
    module = harness.OutputsModule(
        lambda batch, module: {"preds": batch["logits"], "target": batch["target"]}
    )
    trainer.fit(
        module,
        harness.loader(harness.DictDataset(**train), 4),
        harness.loader(harness.DictDataset(**val), 4),
        ckpt_path=ckpt_path,
    )
    if save:
        trainer.save_checkpoint(save)
    return trainer, pair


def logged(trainer, name):
    """``(step, epoch, value)`` of every value logged under ``name``."""
    return [(step, m["epoch"], m[name]) for step, m in trainer.logger.records if name in m]


def test_resume_continues_counters_and_the_open_window(harness, tmp_path):
    straight, straight_callbacks = fit(harness, epochs=3)
    path = str(tmp_path / "epoch1.ckpt")
    first, _ = fit(harness, epochs=1, save=path)
    saved = torch.load(path, weights_only=False)["callbacks"]
    state = saved["MetricsCallback[name=metrics]"]
    assert (state["train_batches"], state["train_epochs"], state["val_runs"]) == (3, 1, 1)
    assert state["train_window"]["batches"] == 3
    assert set(state["train_window"]["metrics"]) == {"acc", "hits"}  # every metric's states
    exact = saved["MetricsCallback[name=exact]"]["train_window"]["metrics"]["hits"]
    assert [rows.shape for rows in exact["kwarg_preds"]] == [(10, 3)]
    assert first.logger.names() & {"acc/train", "acc/val"} == set()

    resumed, resumed_callbacks = fit(harness, epochs=3, ckpt_path=path)
    for name in ("acc/train", "hits/train", "acc/val", "hits/val"):
        expected = logged(straight, name)
        assert expected, name
        assert logged(resumed, name) == expected, name
    for done, again in zip(straight_callbacks, resumed_callbacks, strict=True):
        assert (again.train_batches, again.train_epochs, again.val_runs) == (9, 3, 3)
        assert (
            again.state_dict()["train_window"]["batches"]
            == (done.state_dict()["train_window"]["batches"])
        )


@pytest.mark.parametrize("every", [5, 3], ids=["mid_epoch", "last_batch"])
@pytest.mark.parametrize(
    ("schedule", "values"), [({"every_n_train_epochs": 1}, 2), ({"every_n_train_steps": 1}, 6)]
)
def test_a_fit_resumed_within_an_epoch_logs_the_uninterrupted_values(
    harness, tmp_path, schedule, values, every
):
    """The fit resumes from a checkpoint written after 2 of epoch 1's 3 batches (``every=5``:
    Lightning starts no epoch there), or after epoch 0's last batch (``every=3``: Lightning
    skips that epoch's end and the next one's start). Either way it logs the value of epoch 1
    (over its 3 batches) or of its last batch, and ends with the uninterrupted fit's counters."""

    def fit(resume=None):
        metrics = {"acc": MulticlassAccuracy(num_classes=3, average="micro"), "hits": hits}
        callback = MetricsCallback(metrics, every_n_val_epochs=0, **schedule)
        saver = ModelCheckpoint(tmp_path, "{step}", every_n_train_steps=every, save_top_k=-1)
        trainer = harness.make_trainer([callback, saver], max_epochs=2, enable_checkpointing=True)
        module = harness.OutputsModule(
            lambda batch, module: {"preds": batch["logits"], "target": batch["target"]}
        )
        data = harness.DictDataset(**harness.classification(10, 3, correct=0.5, seed=22))
        trainer.fit(module, ResumableLoader(data, batch_size=4), ckpt_path=resume)
        values = {name: logged(trainer, name) for name in ("acc/train", "hits/train")}
        return values, callback.state_dict()

    straight, counters = fit()
    resumed, resumed_counters = fit(resume=tmp_path / f"step={every}.ckpt")
    after_resume = values // 2 if every == 3 else 1  # epoch 1's values, or its last one
    for name, done in straight.items():
        assert len(done) == values, name
        assert resumed[name] == done[-after_resume:], name
    assert resumed_counters == counters


@pytest.mark.parametrize(
    "validation",
    [{"val_check_interval": 0.5}, {"val_check_interval": 3, "check_val_every_n_epoch": None}],
    ids=["twice_per_epoch", "every_3_batches"],
)
def test_a_resume_at_an_epochs_last_batch_counts_the_validation_it_skips(
    harness, tmp_path, validation
):
    """Epoch 0's last batch (4 of 4) is checkpointed before the validation that follows it,
    if any (after batches 2 and 4 of each epoch; or after batches 3, 6, ... of the fit): the
    resumed fit counts what Lightning skips and logs the later validations as the
    uninterrupted fit does."""

    def fit(resume=None):
        metrics = {"acc": MulticlassAccuracy(num_classes=3, average="micro"), "hits": hits}
        callback = MetricsCallback(metrics, every_n_train_epochs=1, every_n_val_epochs=2)
        saver = ModelCheckpoint(tmp_path, "{step}", every_n_train_steps=4, save_top_k=-1)
        trainer = harness.make_trainer(
            [callback, saver], max_epochs=2, enable_checkpointing=True, **validation
        )
        module = harness.OutputsModule(
            lambda batch, module: {"preds": batch["logits"], "target": batch["target"]}
        )
        train = harness.DictDataset(**harness.classification(16, 3, correct=0.5, seed=23))
        val = harness.DictDataset(**harness.classification(8, 3, correct=0.5, seed=24))
        trainer.fit(module, ResumableLoader(train, batch_size=4), harness.loader(val, 4),
                    ckpt_path=resume)  # fmt: skip
        return logged(trainer, "acc/val"), callback.state_dict()

    (straight, counters), (resumed, resumed_counters) = fit(), fit(tmp_path / "step=4.ckpt")
    assert resumed_counters == counters
    assert resumed == [value for value in straight if value[1] == 1]  # epoch 1's
