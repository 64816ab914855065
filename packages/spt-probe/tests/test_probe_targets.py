"""OnlineProbe's targets: unlabelled rows (label < 0), targets the default loss cannot take,
and evaluation of a probe that never trained."""

import copy

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import Dataset
from torchmetrics.classification import MulticlassAccuracy

from spt_core import callbacks_metrics
from spt_core.testing import DictDataset, SyncFreeAccuracy, captured_logs
from spt_probe import OnlineProbe

UNLABELLED = -1


def probe_on(**kwargs) -> OnlineProbe:
    settings = {"name": "linear", "input": "embedding", "target": "label", "probe": nn.Linear(5, 3)}
    return OnlineProbe(**{**settings, **kwargs})


class Seen(L.Callback):
    """After the probe ran: each training batch's labels and the probe's logits for it."""

    def __init__(self):
        self.batches = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches.append((outputs["embedding"].detach().clone(), batch["label"].clone()))


@pytest.fixture
def lines():
    with captured_logs() as logged:
        yield logged


def unlabel(dataset, every=4):
    """A copy of ``dataset`` where every ``every``-th row (from row ``every - 1``) is
    unlabelled."""
    labels = dataset.columns["label"].clone()
    labels[every - 1 :: every] = UNLABELLED
    return DictDataset(**{**dataset.columns, "label": labels})


def labelled_accuracy(probe, model, dataset):
    """Macro accuracy (torchmetrics' default): the mean over classes of the share of each
    class's labelled rows predicted right."""
    with torch.no_grad():
        predicted = probe(model.encoder(dataset.columns["x"])).argmax(dim=1)
    labels = dataset.columns["label"]
    recalls = [(predicted[labels == c] == c).float().mean().item() for c in range(3)]
    return sum(recalls) / 3


def sgd_on_labelled_rows(start, batches, lr, losses=None):
    """Plain SGD on each batch's mean cross-entropy over its labelled rows; a batch without
    one leaves the weights as they are. Appends ``(loss, labelled rows)`` to ``losses``."""
    probe = copy.deepcopy(start)
    optimizer = torch.optim.SGD(probe.parameters(), lr=lr)
    for x, y in batches:
        keep = y >= 0
        if keep.any():
            loss = F.cross_entropy(probe(x[keep]), y[keep])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if losses is not None:
                losses.append((loss.item(), keep.sum().item()))
    return probe


class LabelledRows:
    """A metric without ``ignore_index``: counts the rows it receives, and every negative
    label among them."""

    def __init__(self):
        self.reset()

    def update(self, preds, target):
        self.rows += len(target)
        self.negative += int((target < 0).sum())

    def compute(self):
        return torch.tensor(float(self.rows))

    def reset(self):
        self.rows, self.negative = 0, 0


# ----------------------------------------------------------------------------- unlabelled rows


def test_unlabelled_rows_never_reach_a_metric(backbone, trainer, loader, data):
    """The README's own set-up (MulticlassAccuracy(num_classes) with default arguments) and
    a metric without ignore_index, which receives the labelled rows only."""
    train, val = unlabel(data), unlabel(data, every=5)  # every class keeps labelled rows
    counter = LabelledRows()
    metrics = {"accuracy": MulticlassAccuracy(3), "top2": MulticlassAccuracy(3, top_k=2)}
    probe = probe_on(metrics={**metrics, "rows": counter})
    model = backbone()
    fit = trainer(callbacks=[probe], max_epochs=2)
    fit.fit(model, loader(train), loader(val))
    assert fit.callback_metrics["eval/linear_accuracy"].item() == pytest.approx(
        labelled_accuracy(probe.module, model, val), abs=1e-6
    )
    assert (
        fit.callback_metrics["eval/linear_rows"].item() == (val.columns["label"] >= 0).sum().item()
    )
    assert (
        fit.callback_metrics["train/linear_rows"].item()
        == (train.columns["label"] >= 0).sum().item()
    )
    copies = [m for live in callbacks_metrics(model)["linear"].values() for m in live.values()]
    assert all(m.negative == 0 for m in copies if isinstance(m, LabelledRows))
    assert torch.isfinite(fit.callback_metrics["train/linear_accuracy"])
    assert torch.isfinite(fit.callback_metrics["train/linear_loss"])


@pytest.mark.parametrize(
    "loss_fn",
    [None, nn.CrossEntropyLoss(), nn.CrossEntropyLoss(ignore_index=7)],
    ids=["default", "cross-entropy", "cross-entropy-ignore-7"],
)
def test_unlabelled_rows_are_left_out_of_the_training_loss(
    backbone, trainer, loader, make_data, loss_fn
):
    data = unlabel(make_data(n=48), every=3)
    data.columns["label"][:8] = UNLABELLED  # the first batch has no labelled row at all
    torch.manual_seed(0)
    start = nn.Linear(5, 3)
    probe = probe_on(
        probe=copy.deepcopy(start), loss_fn=loss_fn, optimizer={"type": "SGD", "lr": 0.5}
    )
    seen = Seen()
    fit = trainer(callbacks=[seen, probe], max_epochs=2, log_every_n_steps=1)
    fit.fit(backbone(), loader(data))
    losses = []
    expected = sgd_on_labelled_rows(start, seen.batches, lr=0.5, losses=losses)
    for key, value in expected.state_dict().items():
        torch.testing.assert_close(probe.module.state_dict()[key], value, msg=key)
    # The last epoch's loss: the mean over its labelled rows of each batch's loss before its
    # step. Its first batch (no labelled row) counts for nothing, and logs a loss of 0.
    last = losses[-5:]  # 6 batches per epoch, 5 with labelled rows
    mean = sum(loss * rows for loss, rows in last) / sum(rows for _, rows in last)
    assert fit.callback_metrics["train/linear_loss"].item() == pytest.approx(mean, rel=1e-5)
    assert torch.isfinite(fit.callback_metrics["train/linear_loss_step"])


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(labels=st.lists(st.integers(-3, 2), min_size=8, max_size=8))
def test_one_batch_of_any_labelling_steps_like_the_reference(
    backbone, trainer, loader, make_data, labels
):
    """One batch of eight rows, each labelled or not: the logged loss is the mean
    cross-entropy of the labelled rows (none logged without one) and the step is plain SGD
    on it (no step without one), for the default loss and for nn.CrossEntropyLoss."""
    data = make_data(n=8)
    data.columns["label"] = torch.tensor(labels)
    for loss_fn in (None, nn.CrossEntropyLoss()):
        torch.manual_seed(0)
        start = nn.Linear(5, 3)
        probe = probe_on(
            probe=copy.deepcopy(start), loss_fn=loss_fn, optimizer={"type": "SGD", "lr": 0.5}
        )
        seen = Seen()
        fit = trainer(callbacks=[seen, probe])
        fit.fit(backbone(), loader(data))
        ((x, y),) = seen.batches
        keep = y >= 0
        if keep.any():
            with torch.no_grad():
                expected = F.cross_entropy(start(x[keep]), y[keep])
            assert fit.callback_metrics["train/linear_loss"].item() == pytest.approx(
                expected.item(), rel=1e-5
            )
        else:
            assert "train/linear_loss" not in fit.callback_metrics
        reference = sgd_on_labelled_rows(start, seen.batches, lr=0.5)
        torch.testing.assert_close(probe.module.weight, reference.weight)


def test_an_epoch_without_a_labelled_row_says_so_once(backbone, trainer, loader, data, lines):
    data.columns["label"][:] = UNLABELLED
    fit = trainer(callbacks=[probe_on()], max_epochs=2)
    fit.fit(backbone(), loader(data))
    assert "train/linear_loss" not in fit.callback_metrics
    said = [line for line in lines if "no training row of 'label' was labelled" in line]
    assert len(said) == 2  # once per epoch


def test_unlabelled_rows_cost_no_host_sync(backbone, trainer, loader, data, no_host_sync):
    metrics = {"accuracy": SyncFreeAccuracy()}
    probe = probe_on(loss_fn=nn.CrossEntropyLoss(), metrics=metrics, accumulate_grad_batches=2)
    probe.on_train_batch_end = no_host_sync(probe.on_train_batch_end)
    probe.on_validation_batch_end = no_host_sync(probe.on_validation_batch_end)
    fit = trainer(callbacks=[probe])
    fit.fit(backbone(), loader(unlabel(data)), loader(unlabel(data)))
    assert probe.on_train_batch_end.calls == probe.on_validation_batch_end.calls == 6
    assert "eval/linear_accuracy" in fit.callback_metrics


# ----------------------------------------------------------------------------- bad targets


class Rows(Dataset):
    """Dict rows with any ``label`` values (strings, floats...)."""

    def __init__(self, labels):
        self.x = torch.randn(len(labels), 6, generator=torch.Generator().manual_seed(0))
        self.labels = labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"x": self.x[i], "label": self.labels[i]}


FLOAT_LABELS = torch.tensor([0.7, 1.2, 2.0, 0.0] * 4)
BAD_TARGETS = {
    "float": (
        FLOAT_LABELS,
        TypeError,
        r"holds torch\.float32 values, but the default loss \(cross-entropy\) takes integer "
        r"class indices \(cast them with \.long\(\)\)",
    ),
    "str": (
        ["cat", "dog"] * 8,
        TypeError,
        "holds a list, not a tensor; class names must be mapped to integer class indices",
    ),
    "two-columns": (
        torch.zeros(16, 2, dtype=torch.long),
        ValueError,
        r"has shape \(8, 2\), but the default loss \(cross-entropy\) takes one class index per "
        r"row",
    ),
}


@pytest.mark.parametrize("stage", ["train", "val"])
@pytest.mark.parametrize("bad", BAD_TARGETS.values(), ids=BAD_TARGETS.keys())
def test_targets_the_default_loss_cannot_take_fail_at_the_first_batch(
    backbone, trainer, loader, stage, bad
):
    labels, error, says = bad
    rows = Rows(labels)
    probe = probe_on(metrics=MulticlassAccuracy(3))
    where = {"train": "training", "val": "validation"}[stage]
    run = trainer(callbacks=[probe])
    start = run.fit if stage == "train" else run.validate
    match = rf"OnlineProbe\[name=linear\]: a {where} batch of 'label' {says}"
    with pytest.raises(error, match=match):
        start(backbone(), loader(rows))
    assert probe.optimizer_steps == 0


def test_features_that_are_no_tensor_are_named(backbone, trainer, loader, data):
    class Listed(backbone):
        def training_step(self, batch, batch_idx):
            return {**super().training_step(batch, batch_idx), "embedding": [1.0, 2.0]}

    with pytest.raises(TypeError, match=r"OnlineProbe\[name=linear\]: 'embedding' holds a list"):
        trainer(callbacks=[probe_on()]).fit(Listed(), loader(data))


def test_targets_need_one_entry_per_row(backbone, trainer, loader, data):
    class Short(backbone):
        def training_step(self, batch, batch_idx):
            return {**super().training_step(batch, batch_idx), "label": batch["label"][:3]}

    with pytest.raises(ValueError, match=r"has shape \(3,\), but 'embedding' has 8 rows"):
        trainer(callbacks=[probe_on()]).fit(Short(), loader(data))


# ----------------------------------------------------------------------------- untrained


def _untrained_lines(lines):
    return [line for line in lines if "the probe has taken no optimizer step yet" in line]


@pytest.mark.parametrize("stage", ["validate", "test"])
def test_evaluating_before_any_step_logs_and_says_the_probe_is_untrained(
    backbone, trainer, loader, data, lines, stage
):
    probe = probe_on(metrics=MulticlassAccuracy(3))
    model = backbone()
    run = trainer(callbacks=[probe])
    (logged,) = getattr(run, stage)(model, loader(data), verbose=False)
    assert "eval/linear_accuracy" in logged  # documented: an untrained probe's baseline
    (said,) = _untrained_lines(lines)
    where = {"validate": "validation", "test": "test"}[stage]
    assert f"OnlineProbe[name=linear]: the probe has taken no optimizer step yet: this {where}" in (
        said
    )


def test_a_trained_probe_is_evaluated_without_a_word(
    backbone, trainer, loader, data, lines, tmp_path
):
    model = backbone()
    run = trainer(callbacks=[probe_on(metrics=MulticlassAccuracy(3))], max_epochs=1)
    run.fit(model, loader(data), loader(data))
    run.validate(model, loader(data), verbose=False)
    run.save_checkpoint(tmp_path / "trained.ckpt")
    assert _untrained_lines(lines) == []
    # A fresh probe that loads the trained one from a checkpoint knows it was trained.
    restored = probe_on(metrics=MulticlassAccuracy(3))
    again = trainer(callbacks=[restored])
    again.validate(backbone(), loader(data), ckpt_path=tmp_path / "trained.ckpt", verbose=False)
    assert restored.optimizer_steps == 6
    assert _untrained_lines(lines) == []
