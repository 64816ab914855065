"""OnlineKNN against `knn_predict` through the shared `CallbackTester`, on one process and on
two gloo processes (the bank then holds both ranks' training rows)."""

import dataclasses
import functools

import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy

from spt_core.testing import Backbone, CallbackTester, DictDataset
from spt_knn import OnlineKNN, knn_predict


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    centers = torch.randn(3, 4, generator=torch.Generator().manual_seed(0)) * 2
    return centers[labels] + torch.randn(n, 4, generator=generator), labels


@pytest.fixture(scope="module")
def tester() -> CallbackTester:
    make_knn = functools.partial(
        OnlineKNN,
        name="knn",
        input="embedding",
        target="label",
        queue_length=64,
        metrics={"accuracy": MulticlassAccuracy(3, average="micro")},
        num_classes=3,
        k=5,
        weighting="exp",
        temperature=0.5,
    )
    (x, y), (val_x, val_y) = _blobs(32, seed=1), _blobs(24, seed=2)
    return CallbackTester(
        make_knn, Backbone, DictDataset(x=x, label=y), DictDataset(x=val_x, label=val_y), 4
    )


def _reference(tester: CallbackTester) -> dict[str, torch.Tensor]:
    train, val = tester.train.columns, tester.val.columns
    scores = knn_predict(
        val["x"], train["x"], train["label"], 3, k=5, temperature=0.5, weighting="exp"
    )
    return {"eval/knn_accuracy": (scores.argmax(dim=1) == val["label"]).float().mean()}


def test_single_process_accuracy_equals_knn_predict(tester):
    tester.assert_logged(tester.run(), _reference(tester), atol=1e-6)


def test_two_process_accuracy_equals_knn_predict_on_all_rows(tester):
    tester.assert_logged(tester.run_ddp(), _reference(tester), atol=1e-6)


@pytest.fixture(scope="module")
def sweep_tester(tester) -> CallbackTester:
    make_sweep = functools.partial(tester.make_callback, k=(3, 5, 9), temperature=(0.5, 2.0))
    return dataclasses.replace(tester, make_callback=make_sweep)


def _sweep_reference(tester: CallbackTester) -> dict[str, torch.Tensor]:
    train, val = tester.train.columns, tester.val.columns
    scores = knn_predict(
        val["x"], train["x"], train["label"], 3, k=(3, 5, 9), temperature=(0.5, 2.0),
        weighting="exp",
    )  # fmt: skip
    return {
        f"eval/knn_accuracy_k{k}_t{t}": (pair.argmax(dim=1) == val["label"]).float().mean()
        for (k, t), pair in scores.items()
    }


def test_single_process_sweep_equals_knn_predict_per_pair(sweep_tester):
    expected = _sweep_reference(sweep_tester)
    assert len({value.item() for value in expected.values()}) > 1
    sweep_tester.assert_logged(sweep_tester.run(), expected, atol=1e-6)


def test_two_process_sweep_equals_knn_predict_per_pair(sweep_tester):
    sweep_tester.assert_logged(sweep_tester.run_ddp(), _sweep_reference(sweep_tester), atol=1e-6)
