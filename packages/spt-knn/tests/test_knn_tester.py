"""OnlineKNN against `knn_predict` through the shared `CallbackTester`, on one process and on
two gloo processes (the bank then holds both ranks' training rows)."""

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
