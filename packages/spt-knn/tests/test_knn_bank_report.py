"""The bank report (#15.3): ``eval/{name}_bank_rows`` and ``eval/{name}_bank_classes``."""

import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy

from spt_core.testing import RecordingLogger


def _reference(features: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """Labelled, finite rows and their distinct classes, row by row."""
    kept = [
        int(y) for x, y in zip(features.tolist(), labels.tolist(), strict=True)
        if y >= 0 and all(v == v and abs(v) != float("inf") for v in x)
    ]  # fmt: skip
    return len(kept), len(set(kept))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bank_rows_and_classes_equal_a_python_count_of_the_queue(tiny, make_knn, seed):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(48, 4, generator=generator)
    # Few classes of 6, some unlabelled rows, a non-finite row or two: an imbalanced bank.
    labels = torch.tensor([0, 2, 5, -1])[torch.randint(0, 4, (48,), generator=generator)]
    labels[-5 - seed :] = 2
    features[torch.randint(24, 48, (seed,), generator=generator), 1] = float("nan")
    knn = make_knn(queue_length=24, num_classes=6, metrics={"acc": MulticlassAccuracy(6)})
    logger = RecordingLogger()
    trainer = tiny.trainer([knn], max_epochs=2, logger=logger, log_every_n_steps=1)
    trainer.fit(tiny.model(), tiny.loader(features, labels), tiny.loader(features[:8], labels[:8]))
    rows, classes = _reference(features[-24:], labels[-24:])
    assert logger.values("eval/knn_bank_rows") == [rows, rows]
    assert logger.values("eval/knn_bank_classes") == [classes, classes]
    assert classes < 6 and rows < 24


def test_an_empty_bank_reports_zero_rows_and_classes_and_nothing_else(tiny, make_knn):
    logger = RecordingLogger()
    trainer = tiny.trainer([make_knn()], logger=logger)
    trainer.validate(tiny.model(), tiny.loader(*tiny.data(24, 4, 3)), verbose=False)
    trainer.test(tiny.model(), tiny.loader(*tiny.data(24, 4, 3)), verbose=False)
    logged = {name: values for name, values in logger.logged().items() if name != "epoch"}
    assert logged == {"eval/knn_bank_classes": [0.0, 0.0], "eval/knn_bank_rows": [0, 0]}


def test_a_bank_without_labelled_rows_reports_zero(tiny, make_knn):
    features, labels = tiny.data(32, 4, 3)
    trainer = tiny.trainer([make_knn(num_classes=None, metrics={})])
    trainer.fit(tiny.model(), tiny.loader(features, labels * 0 - 1), tiny.loader(features, labels))
    metrics = trainer.callback_metrics
    assert (metrics["eval/knn_bank_rows"], metrics["eval/knn_bank_classes"]) == (0, 0)
