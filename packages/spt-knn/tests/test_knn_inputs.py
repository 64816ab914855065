"""What OnlineKNN does with unusual inputs: unlabelled rows, labels that are not integers,
a batch entry it would overwrite, empty batches."""

import pytest
import torch
import torchmetrics
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from spt_knn import knn_predict


class _Targets(torchmetrics.Metric):
    """No ``ignore_index``: records the targets it is given."""

    def __init__(self):
        super().__init__()
        self.add_state("seen", [], dist_reduce_fx="cat")

    def update(self, preds, target):
        self.seen.append(target)

    def compute(self):
        return torch.cat(self.seen).float().mean()


def _labelled_accuracy(val_x, val_y, bank, bank_labels):
    scores = knn_predict(val_x, bank, bank_labels, 3, k=5)
    labelled = val_y >= 0
    return (scores.argmax(dim=1)[labelled] == val_y[labelled]).float().mean()


def test_unlabelled_validation_rows_are_left_out_of_every_metric(tiny, make_knn):
    features, labels = tiny.data(64, 4, 3)
    val_x, val_y = tiny.data(40, 4, 3, seed=1)
    val_y = torch.where(torch.arange(40) % 4 == 1, -1, val_y)
    metrics = {
        "accuracy": MulticlassAccuracy(3, average="micro"),  # bincount refused -1 before
        "f1": MulticlassF1Score(3),
        "targets": _Targets(),  # no ignore_index: gets the labelled rows only
    }
    knn = make_knn(metrics=metrics)
    trainer = tiny.trainer([knn])
    trainer.fit(tiny.model(), tiny.loader(features, labels), tiny.loader(val_x, val_y))
    logged = trainer.callback_metrics
    expected = _labelled_accuracy(val_x, val_y, features[-32:], labels[-32:])
    assert logged["eval/knn_accuracy"] == pytest.approx(expected.item())
    assert logged["eval/knn_targets"] == pytest.approx(val_y[val_y >= 0].float().mean().item())
    labelled = val_y >= 0
    f1 = MulticlassF1Score(3)(
        knn_predict(val_x, features[-32:], labels[-32:], 3, k=5)[labelled], val_y[labelled]
    )
    assert logged["eval/knn_f1"] == pytest.approx(f1.item())


def test_string_labels_are_refused_at_the_first_training_batch(tiny, make_knn):
    features, labels = tiny.data(32, 4, 3)
    names = ["cat", "dog", "owl"]

    class Named(torch.utils.data.Dataset):
        def __len__(self):
            return len(labels)

        def __getitem__(self, i):
            return {"x": features[i], "label": names[int(labels[i])]}

    model = tiny.model()
    trainer = tiny.trainer([make_knn()])
    owners = r"OnlineQueue\[name=label\] \(filled for OnlineKNN\[name=knn\]\)"
    with pytest.raises(TypeError, match=owners + r": 'label' must be a tensor .*list of str"):
        trainer.fit(model, DataLoader(Named(), batch_size=8))
    assert trainer.global_step == 1  # the first batch stopped it


@pytest.mark.parametrize("labels", [[0.0, 0.7], [1.0, 2.0]], ids=["non-integral", "integral"])
def test_float_labels_are_refused_at_the_first_training_batch(tiny, labels, make_knn):
    features, _ = tiny.data(32, 4, 3)
    values = torch.tensor(labels).repeat(16)
    trainer = tiny.trainer([make_knn()])
    match = (
        r"\(filled for OnlineKNN\[name=knn\]\): 'label' holds torch.float32 values, but "
        r"OnlineKNN\[name=knn\] reads it as integer class labels"
    )
    with pytest.raises(TypeError, match=match):
        trainer.fit(tiny.model(), tiny.loader(features, values))
    assert trainer.global_step == 1  # the first batch stopped it


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (lambda y: [str(int(v)) for v in y], r"'label' must be a tensor .* list of str \('0'\)"),
        (lambda y: y.float(), r"'label' must hold integer class labels, got torch.float32"),
    ],
    ids=["strings", "floats"],
)
def test_unusable_validation_labels_name_the_callback_and_key(tiny, value, match, make_knn):
    features, labels = tiny.data(64, 4, 3)
    model = tiny.model()
    plain = model.validation_step
    model.validation_step = lambda batch, batch_idx: {
        **plain(batch, batch_idx),
        "label": value(batch["label"]),
    }
    trainer = tiny.trainer([make_knn()])
    with pytest.raises(TypeError, match=r"OnlineKNN\[name=knn\]: " + match):
        trainer.fit(model, tiny.loader(features, labels), tiny.loader(features, labels))


def test_an_existing_preds_entry_is_overwritten_with_one_warning(tiny, messages, make_knn):
    features, labels = tiny.data(64, 4, 3)

    class WithPreds(torch.utils.data.Dataset):
        def __len__(self):
            return 24

        def __getitem__(self, i):
            return {"x": features[i], "label": labels[i], "knn_preds": torch.zeros(3)}

    trainer = tiny.trainer([make_knn()], max_epochs=2)
    trainer.fit(tiny.model(), tiny.loader(features, labels), DataLoader(WithPreds(), batch_size=8))
    warned = [m for m in messages if "already holds 'knn_preds'; it is overwritten" in m]
    assert len(warned) == 2  # once per epoch, not once per batch
    clean = tiny.trainer([make_knn()], max_epochs=2)
    messages.clear()
    clean.fit(tiny.model(), tiny.loader(features, labels), tiny.loader(features[:24], labels[:24]))
    assert not [m for m in messages if "already holds" in m]


def test_an_empty_validation_batch_is_skipped_by_the_metrics(tiny, make_knn):
    features, labels = tiny.data(64, 4, 3)
    val_x, val_y = tiny.data(16, 4, 3, seed=1)
    batches = [
        {"x": val_x[:8], "label": val_y[:8]},
        {"x": val_x[:0], "label": val_y[:0]},
        {"x": val_x[8:], "label": val_y[8:]},
    ]
    trainer = tiny.trainer([make_knn()])
    trainer.fit(tiny.model(), tiny.loader(features, labels), DataLoader(batches, batch_size=None))
    expected = _labelled_accuracy(val_x, val_y, features[-32:], labels[-32:])
    assert trainer.callback_metrics["eval/knn_accuracy"] == pytest.approx(expected.item())
