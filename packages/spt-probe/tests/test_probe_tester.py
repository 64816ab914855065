"""OnlineProbe against the functional reference through the shared `CallbackTester`, on one
process and on two gloo processes. The probe's learning rate is 0, so the reference is the
fixed probe applied to every row: accuracy by torchmetrics, loss by `masked_cross_entropy`."""

import functools

import pytest
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.functional.classification import multiclass_accuracy

from spt_core.testing import Backbone, CallbackTester, DictDataset
from spt_probe import OnlineProbe
from spt_probe.functional import masked_cross_entropy


def _blobs(n: int, seed: int) -> DictDataset:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    centers = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
    return DictDataset(x=centers[labels] + torch.randn(n, 6, generator=generator), label=labels)


@pytest.fixture(scope="module")
def tester() -> CallbackTester:
    torch.manual_seed(3)
    make_probe = functools.partial(
        OnlineProbe,
        name="linear",
        input="embedding",
        target="label",
        probe=nn.Linear(6, 3),
        optimizer={"type": "SGD", "lr": 0.0},
        metrics={"accuracy": MulticlassAccuracy(3, average="micro")},
    )
    return CallbackTester(make_probe, Backbone, _blobs(32, seed=1), _blobs(24, seed=2), 4)


def _reference(tester: CallbackTester) -> dict[str, torch.Tensor]:
    probe = tester.make_callback.keywords["probe"]
    expected = {}
    for stage, data in (("train", tester.train.columns), ("eval", tester.val.columns)):
        with torch.no_grad():
            logits = probe(data["x"])
        accuracy = multiclass_accuracy(logits, data["label"], 3, average="micro")
        expected[f"{stage}/linear_accuracy"] = accuracy
    with torch.no_grad():
        train = tester.train.columns
        expected["train/linear_loss"] = masked_cross_entropy(probe(train["x"]), train["label"])
    return expected


def test_single_process_values_equal_the_fixed_probe(tester):
    tester.assert_logged(tester.run(), _reference(tester), atol=1e-5)


def test_two_process_values_equal_the_fixed_probe_on_all_rows(tester):
    tester.assert_logged(tester.run_ddp(), _reference(tester), atol=1e-5)
