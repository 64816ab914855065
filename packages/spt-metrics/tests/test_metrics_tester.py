"""MetricsCallback against the torchmetrics functions through the shared `CallbackTester`, on
one process and on two gloo processes (each rank sees half of the rows)."""

import functools

import pytest
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

from spt_core.testing import Backbone, CallbackTester, DictDataset
from spt_metrics import MetricsCallback


def preds_and_target(batch, module):
    return {"preds": batch["logits"], "target": batch["target"]}


@pytest.fixture
def tester(harness) -> CallbackTester:
    make_callback = functools.partial(
        MetricsCallback,
        {"acc": MulticlassAccuracy(3, average="micro"), "f1": MulticlassF1Score(3)},
        every_n_train_epochs=1,
    )
    return CallbackTester(
        make_callback,
        functools.partial(Backbone, outputs=preds_and_target),
        DictDataset(**harness.classification(48, 3, correct=0.7, seed=30)),
        DictDataset(**harness.classification(32, 3, correct=0.4, seed=31)),
        batch_size=8,
    )


def _reference(tester: CallbackTester) -> dict[str, float]:
    expected = {}
    for stage, data in (("train", tester.train.columns), ("val", tester.val.columns)):
        preds, target = data["logits"], data["target"]
        expected[f"acc/{stage}"] = multiclass_accuracy(preds, target, 3, average="micro")
        expected[f"f1/{stage}"] = multiclass_f1_score(preds, target, 3)
    return expected


def test_single_process_values_equal_the_functions(tester):
    tester.assert_logged(tester.run(), _reference(tester), atol=1e-6)


def test_two_process_values_equal_the_functions_on_all_rows(tester):
    tester.assert_logged(tester.run_ddp(), _reference(tester), atol=1e-6)
