"""Labels outside a metric's classes and NaN/inf inputs, in real Trainers and against a
plain-Python model of the per-epoch checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC
from torchmetrics.functional.classification import multiclass_accuracy

from spt_core.testing import captured_logs
from spt_metrics import MetricsCallback
from spt_metrics.checks import InputChecks, LabelCheck


def hit_rate(preds, target):
    return float((preds.argmax(-1) == target).mean())


def outputs_for_preds(batch, module):
    return {"preds": batch["logits"], "target": batch["target"]}


@pytest.fixture
def messages():
    with captured_logs() as lines:
        yield lines


def fit(harness, callback, train, val=None, **trainer_kwargs):
    trainer = harness.make_trainer([callback], **trainer_kwargs)
    trainer.fit(
        harness.OutputsModule(outputs_for_preds),
        harness.loader(harness.DictDataset(**train), 4),
        None if val is None else harness.loader(harness.DictDataset(**val), 4),
    )
    return trainer


# ------------------------------------------------------------------ labels


def test_a_label_that_crashes_torchmetrics_is_named_with_metric_key_and_classes(harness):
    data = harness.classification(12, 2, correct=0.5, seed=1)
    data["target"][6] = 5
    callback = MetricsCallback({"acc": MulticlassAccuracy(num_classes=2)})
    match = (
        r"MetricsCallback\[name=metrics\]: metric 'acc' got 1 train label\(s\) of key 'target' "
        r"outside 0..1 or ignore_index=-1 \(num_classes=2\): smallest 5, largest 5"
    )
    with pytest.raises(ValueError, match=match):
        fit(harness, callback, data)


def test_a_label_torchmetrics_would_silently_accept_fails_before_the_epoch_is_logged(harness):
    train = harness.classification(12, 2, correct=0.5, seed=2)
    val = harness.classification(12, 2, correct=0.5, seed=3)
    val["target"][[2, 9]] = torch.tensor([7, -3])
    callback = MetricsCallback({"auroc": MulticlassAUROC(num_classes=2)}, every_n_train_steps=0)
    trainer = harness.make_trainer([callback])
    match = r"metric 'auroc' got 2 val label\(s\) of key 'target' .* smallest -3, largest 7"
    with pytest.raises(ValueError, match=match):
        trainer.fit(
            harness.OutputsModule(outputs_for_preds),
            harness.loader(harness.DictDataset(**train), 4),
            harness.loader(harness.DictDataset(**val), 4),
        )
    assert "auroc/val" not in trainer.logger.names()


def test_labels_at_ignore_index_are_left_to_the_metric_without_a_word(harness, messages):
    data = harness.classification(16, 3, correct=0.6, seed=4)
    data["target"][::4] = -1  # unlabelled: StageMetrics' copies ignore -1
    explicit = harness.classification(16, 3, correct=0.6, seed=5)
    explicit["target"][1::4] = 9
    for rows, metric in (
        (data, MulticlassAccuracy(num_classes=3, average="micro")),
        (explicit, MulticlassAccuracy(num_classes=3, average="micro", ignore_index=9)),
    ):
        callback = MetricsCallback({"acc": metric}, every_n_train_epochs=1)
        trainer = fit(harness, callback, rows)
        kept = (rows["target"] >= 0) & (rows["target"] < 3)
        expected = multiclass_accuracy(
            rows["logits"][kept], rows["target"][kept], 3, average="micro"
        ).item()
        assert trainer.logger.values("acc/train") == pytest.approx([expected])
    assert not [line for line in messages if "WARNING" in line or "NaN" in line]


# ------------------------------------------------------------------ NaN / inf


def test_non_finite_inputs_of_a_torchmetric_warn_once_per_epoch(harness, messages):
    data = harness.classification(12, 3, correct=0.5, seed=6)
    data["logits"][3, 1] = float("nan")
    data["logits"][8, 0] = float("inf")
    callback = MetricsCallback({"acc": MulticlassAccuracy(num_classes=3)}, every_n_train_epochs=1)
    fit(harness, callback, data, max_epochs=2)
    warned = [line for line in messages if "NaN/inf" in line]
    assert len(warned) == 2  # once per epoch
    for line in warned:
        assert "MetricsCallback[name=metrics]: 2 NaN/inf value(s) of key 'preds' reached " in line
        assert "metric 'acc' during train" in line


@pytest.mark.parametrize("per_step", [True, False])
def test_non_finite_inputs_of_a_metric_function_warn_in_both_modes(harness, messages, per_step):
    train = harness.classification(12, 3, correct=0.5, seed=7)
    val = harness.classification(12, 3, correct=0.5, seed=8)
    val["logits"][5, 2] = float("nan")
    callback = MetricsCallback(
        {"hit": hit_rate}, compute_per_val_step=per_step, every_n_train_steps=0
    )
    fit(harness, callback, train, val)
    (warned,) = [line for line in messages if "NaN/inf" in line]
    assert "value(s) of key 'preds' reached metric 'hit' during val" in warned


def test_clean_inputs_give_no_warning(harness, messages):
    data = harness.classification(12, 3, correct=0.5, seed=9)
    metrics = {"acc": MulticlassAccuracy(num_classes=3), "hit": hit_rate}
    fit(harness, MetricsCallback(metrics), data, data)
    assert not [line for line in messages if "WARNING" in line]


# ------------------------------------------------------------------ the checks alone

batches = st.lists(
    st.tuples(
        st.lists(st.sampled_from([0.0, 1.5, math.nan, math.inf, -math.inf]), max_size=6),
        st.lists(st.integers(-4, 6), max_size=6),
    ),
    max_size=5,
)


@settings(max_examples=60, deadline=None)
@given(batches=batches, num_classes=st.integers(1, 4), ignore_index=st.sampled_from([None, -1, 5]))
def test_input_checks_equal_a_plain_python_count(batches, num_classes, ignore_index):
    class Metric:
        pass

    metric = Metric()
    metric.ignore_index = ignore_index
    checks = InputChecks([0], [LabelCheck("m", 1, num_classes)])
    for values, labels in batches:
        checks.update("val", 0, [torch.tensor(values), torch.tensor(labels)], {"m": metric})
    (report,) = checks.read("val", num_dataloaders=1)
    non_finite = sum(not math.isfinite(v) for values, _ in batches for v in values)
    outside = [
        label
        for _, labels in batches
        for label in labels
        if not 0 <= label < num_classes and label != ignore_index
    ]
    assert report.non_finite == ({0: non_finite} if non_finite else {})
    if outside:
        (labels,) = report.labels
        assert (labels.count, labels.smallest, labels.largest) == (
            len(outside),
            min(outside),
            max(outside),
        )
        assert labels.ignore_index == ignore_index
    else:
        assert report.labels == []
    (again,) = checks.read("val", num_dataloaders=1)  # started over
    assert again.non_finite == {} and again.labels == []


def test_float_targets_and_scalars_are_not_labels():
    checks = InputChecks([0, 1], [LabelCheck("m", 1, 2)])
    checks.update("train", 0, [np.float64("nan").item(), torch.tensor([7.0, 0.5])], {})
    (report,) = checks.read("train", num_dataloaders=1)
    assert report.non_finite == {0: 1} and report.labels == []
