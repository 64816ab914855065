"""OnlineKNN inside small in-process Trainers (the model's embedding is its input, so the
bank is exactly the training rows and every logged value can be recomputed offline)."""

import contextlib

import lightning as L
import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy

from spt_core import callbacks_metrics
from spt_core.testing import SyncFreeAccuracy, forbid_host_sync
from spt_distance import _plan
from spt_knn import OnlineKNN, knn_predict
from spt_queue import find_queue


class Recorder(L.Callback):
    """Keeps what OnlineKNN wrote into each validation batch."""

    def __init__(self):
        self.preds = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, idx=0):
        self.preds.append(batch.get("knn_preds"))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"k": 0}, ValueError, "k must be an integer >= 1, got 0"),
        ({"k": -3}, ValueError, "k must be an integer >= 1"),
        ({"temperature": 0}, ValueError, "temperature must be a finite number > 0"),
        ({"temperature": -0.1}, ValueError, "temperature"),
        ({"chunk_size": 0}, ValueError, r"chunk_size must be -1 \(one block\)"),
        ({"chunk_size": -2}, ValueError, "chunk_size"),
        ({"chunk_size": 1.5}, ValueError, "chunk_size"),  # any invalid chunk_size, as the seed
        ({"chunk_size": "auto"}, ValueError, "chunk_size"),
        ({"distance_metric": "cos"}, ValueError, r"distance_metric must be one of \("),
        ({"weighting": "gaussian"}, ValueError, r"weighting must be one of \('inverse'"),
        ({"distributed": "ring"}, ValueError, r"distributed must be one of \('gather', 'shard'\)"),
        ({"queue_length": -1}, ValueError, "queue_length must be an integer >= 0, got -1"),
        ({"input_dim": (4, 0)}, ValueError, r"input_dim must hold positive sizes, got \(4, 0\)"),
        ({"input_dim": 2.5}, TypeError, r"input_dim must be None, an int or a tuple/list"),
        (
            {"queue_length": 8.0},
            TypeError,
            "queue_length must be an integer >= 0, got 8.0",
        ),
        ({"k": 2.0}, TypeError, "k must be an integer >= 1, got 2.0"),
        ({"num_classes": "3"}, TypeError, "num_classes must be an integer >= 1, got '3'"),
        ({"target": 3}, TypeError, "target must be a non-empty string"),
        ({"target_dim": 3}, ValueError, "target_dim must be None or 1"),
        ({"target_dim": "1"}, TypeError, "target_dim must be None or 1"),
        ({"num_classes": 0}, ValueError, "num_classes must be an integer >= 1, got 0"),
        ({"input": ""}, ValueError, "input must be a non-empty string"),
        ({"name": "a/b"}, ValueError, "name"),
        (
            {"metrics": {"acc": len}},
            TypeError,
            r"metrics\['acc'\] must be a metric with update/compute/reset",
        ),
    ],
)
def test_bad_arguments_are_refused_at_construction(kwargs, error, match, make_knn):
    with pytest.raises(error, match=match) as caught:
        make_knn(**kwargs)
    if "name" not in kwargs:  # a bad name leaves no state_key to name
        assert str(caught.value).startswith("OnlineKNN[name=knn]: ")


def test_logged_accuracy_and_predictions_equal_an_offline_recomputation(tiny, make_knn):
    features, labels = tiny.data(96, 4, 3, seed=0)
    val_x, val_y = tiny.data(24, 4, 3, seed=1)
    knn, recorder = make_knn(k=7, weighting="exp", temperature=0.5), Recorder()
    trainer = tiny.trainer([knn, recorder])
    trainer.fit(tiny.model(), tiny.loader(features, labels), tiny.loader(val_x, val_y))
    bank, bank_labels = features[-32:], labels[-32:]
    expected = torch.cat(  # batch by batch, as validation ran: the same matrix products
        [
            knn_predict(x, bank, bank_labels, 3, k=7, temperature=0.5, weighting="exp")
            for x in val_x.split(8)
        ]
    )
    assert torch.equal(torch.cat(recorder.preds), expected)
    accuracy = (expected.argmax(dim=1) == val_y).float().mean()
    assert trainer.callback_metrics["eval/knn_accuracy"] == accuracy
    exposed = callbacks_metrics(trainer.lightning_module)["knn"]
    assert list(exposed) == ["val/0"]
    assert isinstance(exposed["val/0"]["accuracy"], MulticlassAccuracy)
    assert exposed["val/0"]["accuracy"] is not knn.metrics.prototypes["accuracy"]


def test_a_metric_collection_is_unpacked(make_knn):
    from torchmetrics import MetricCollection
    from torchmetrics.classification import MulticlassF1Score

    collection = MetricCollection({"acc": MulticlassAccuracy(3), "f1": MulticlassF1Score(3)})
    knn = make_knn(metrics=collection)
    assert sorted(knn.metrics.prototypes) == ["acc", "f1"]


def test_features_are_flattened_to_the_product_of_input_dim(tiny, make_knn):
    features, labels = tiny.data(48, 6, 3)
    knn = make_knn(input_dim=(2, 3), k=3)
    trainer = tiny.trainer([knn])
    trainer.fit(
        tiny.model(shape=(2, 3)),
        tiny.loader(features, labels),
        tiny.loader(*tiny.data(16, 6, 3, 1)),
    )
    queue = find_queue(trainer, "embedding")
    assert queue.dim == 6
    assert torch.equal(queue.buffer.last(), features[-32:])
    assert "eval/knn_accuracy" in trainer.callback_metrics


def test_empty_queue_skips_with_one_line_and_logs_nothing(tiny, messages, make_knn):
    knn = make_knn()
    trainer = tiny.trainer([knn])
    results = trainer.validate(tiny.model(), tiny.loader(*tiny.data(24, 4, 3)))
    assert results == [{"eval/knn_bank_rows": 0.0, "eval/knn_bank_classes": 0.0}]
    skipped = [m for m in messages if "holds no labelled rows yet" in m]
    assert len(skipped) == 1


def test_two_validation_loaders_get_their_own_metrics(tiny, make_knn):
    features, labels = tiny.data(96, 4, 3)
    clean, clean_y = tiny.data(24, 4, 3, seed=1)
    noisy = clean + 4 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(5))
    knn = make_knn(k=5)
    trainer = tiny.trainer([knn])
    loaders = [tiny.loader(clean, clean_y), tiny.loader(noisy, clean_y)]
    trainer.fit(tiny.model(), tiny.loader(features, labels), loaders)
    for idx, x in enumerate((clean, noisy)):
        scores = knn_predict(x, features[-32:], labels[-32:], 3, k=5)
        accuracy = (scores.argmax(dim=1) == clean_y).float().mean()
        assert trainer.callback_metrics[f"eval/knn_accuracy/dataloader_idx_{idx}"] == accuracy
    values = [trainer.callback_metrics[f"eval/knn_accuracy/dataloader_idx_{i}"] for i in (0, 1)]
    assert values[0] != values[1]
    assert sorted(callbacks_metrics(trainer.lightning_module)["knn"]) == ["val/0", "val/1"]


def test_test_stage_logs_under_eval(tiny, make_knn):
    features, labels = tiny.data(64, 4, 3)
    test_x, test_y = tiny.data(20, 4, 3, seed=2)
    knn = make_knn()
    trainer = tiny.trainer([knn], limit_val_batches=0)
    trainer.fit(tiny.model(), tiny.loader(features, labels))
    (results,) = trainer.test(trainer.lightning_module, tiny.loader(test_x, test_y))
    scores = knn_predict(test_x, features[-32:], labels[-32:], 3, k=5)
    assert results["eval/knn_accuracy"] == pytest.approx(
        (scores.argmax(dim=1) == test_y).float().mean().item()
    )


def test_inferred_num_classes_warns_once_per_epoch(tiny, messages, make_knn):
    features, labels = tiny.data(64, 4, 3)
    knn, recorder = make_knn(num_classes=None, metrics={}), Recorder()
    trainer = tiny.trainer([knn, recorder], max_epochs=2)
    trainer.fit(tiny.model(), tiny.loader(features, labels), tiny.loader(*tiny.data(24, 4, 3, 1)))
    warnings = [m for m in messages if "num_classes=None: inferred 3 classes" in m]
    assert len(warnings) == 2
    assert all(p.shape == (8, 3) for p in recorder.preds)


def test_explicit_num_classes_is_checked_against_the_queue(tiny, make_knn):
    features, labels = tiny.data(64, 4, 3)
    knn = make_knn(num_classes=2, metrics={})
    trainer = tiny.trainer([knn])
    match = r"queue of 'label' holds label 2, but num_classes gives 2 classes"
    with pytest.raises(ValueError, match=match):
        trainer.fit(tiny.model(), tiny.loader(features, labels), tiny.loader(features, labels))


def test_k_beyond_the_bank_is_clipped_with_one_warning_per_epoch(tiny, messages, make_knn):
    features, labels = tiny.data(64, 4, 3)
    val_x, val_y = tiny.data(24, 4, 3, seed=1)
    knn = make_knn(k=500)
    trainer = tiny.trainer([knn], max_epochs=2)
    trainer.fit(tiny.model(), tiny.loader(features, labels), tiny.loader(val_x, val_y))
    assert len([m for m in messages if "k=500 exceeds the 32 labelled rows" in m]) == 2
    scores = knn_predict(val_x, features[-32:], labels[-32:], 3, k=32)
    accuracy = (scores.argmax(dim=1) == val_y).float().mean()
    assert trainer.callback_metrics["eval/knn_accuracy"] == accuracy


def test_unlabelled_queue_rows_are_left_out(tiny, make_knn):
    features, labels = tiny.data(64, 4, 3)
    labels = torch.where(torch.arange(64) % 4 == 0, -1, labels)
    val_x, val_y = tiny.data(24, 4, 3, seed=1)
    knn = make_knn(k=5)
    trainer = tiny.trainer([knn])
    trainer.fit(tiny.model(), tiny.loader(features, labels), tiny.loader(val_x, val_y))
    kept = labels[-32:] >= 0
    scores = knn_predict(val_x, features[-32:][kept], labels[-32:][kept], 3, k=5)
    accuracy = (scores.argmax(dim=1) == val_y).float().mean()
    assert trainer.callback_metrics["eval/knn_accuracy"] == accuracy


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_features_are_scored_in_float32(tiny, dtype, make_knn):
    features, labels = tiny.data(64, 4, 3)
    val_x, val_y = tiny.data(24, 4, 3, seed=1)
    knn, recorder = make_knn(), Recorder()
    trainer = tiny.trainer([knn, recorder])
    trainer.fit(
        tiny.model(),
        tiny.loader(features.to(dtype), labels),
        tiny.loader(val_x.to(dtype), val_y),
    )
    preds = torch.cat(recorder.preds)
    assert preds.dtype == torch.float32
    bank = features[-32:].to(dtype).float()
    expected = [knn_predict(x.to(dtype).float(), bank, labels[-32:], 3) for x in val_x.split(8)]
    assert torch.equal(preds, torch.cat(expected))


class _Counting:
    """Counts host syncs (item, tolist, cpu, numpy, bool/int/float of a tensor) while on."""

    NAMES = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__")

    def __init__(self, monkeypatch):
        self.on, self.calls = False, []
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, original))

    def _wrap(self, name, original):
        def counted(tensor, *args, **kwargs):
            if self.on:
                self.calls.append(name)
            return original(tensor, *args, **kwargs)

        return counted


@pytest.mark.parametrize("distributed", ["gather", "shard"])
def test_validation_batches_after_the_first_do_not_sync(tiny, monkeypatch, distributed):
    counter = _Counting(monkeypatch)
    # The search as it runs off the CPU, where it never waits for the device.
    monkeypatch.setattr(_plan, "sync_free", lambda device: True)

    class Watched(OnlineKNN):
        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, idx=0):
            watched = batch_idx > 0
            counter.on = watched
            try:
                with forbid_host_sync() if watched else contextlib.nullcontext():
                    super().on_validation_batch_end(
                        trainer, pl_module, outputs, batch, batch_idx, idx
                    )
            finally:
                counter.on = False

    features, labels = tiny.data(64, 4, 3)
    val_x, val_y = tiny.data(40, 4, 3, 1)
    val_y = torch.where(torch.arange(40) % 3 == 1, -1, val_y)  # unlabelled rows in every batch
    # torchmetrics' classification metrics sync in their update (bincount); this one does not.
    # A plain metric (update/compute/reset, not a torchmetrics Metric) is accepted.
    metrics = {"acc": SyncFreeAccuracy()}
    knn = Watched("knn", "embedding", "label", 32, metrics=metrics, k=5, distributed=distributed)
    trainer = tiny.trainer([knn], max_epochs=2)
    trainer.fit(tiny.model(), tiny.loader(features, labels), tiny.loader(val_x, val_y))
    assert counter.calls == []
    scores = knn_predict(val_x, features[-32:], labels[-32:], 3, k=5)
    labelled = val_y >= 0
    accuracy = (scores.argmax(dim=1)[labelled] == val_y[labelled]).float().mean()
    assert trainer.callback_metrics["eval/knn_acc"] == pytest.approx(accuracy.item())
    counter.on = True
    torch.ones(1).item()
    assert counter.calls == ["item"]  # the counter does see syncs when they happen


def test_consumers_share_passive_queues_that_never_gather(tiny, make_knn):
    """Gather and shard consumers share a registered queue; neither changes it for the other
    (each gathers or shards what it reads), and its capacity is the largest request."""
    from spt_queue import OnlineQueue

    registered = OnlineQueue("label", queue_length=64)
    gather = make_knn(name="g", metrics={})
    shard = make_knn(name="s", metrics={}, distributed="shard", input="x")
    trainer = tiny.trainer([registered, shard])
    shard.setup(trainer, tiny.model(), "fit")
    assert find_queue(trainer, "label") is registered
    state = registered.state_dict()
    gather.setup(trainer, tiny.model(), "fit")
    assert find_queue(trainer, "label") is registered
    assert registered.queue_length == 64
    assert registered.state_dict().keys() == state.keys()
    for queue in (registered, find_queue(trainer, "x"), find_queue(trainer, "embedding")):
        assert not hasattr(queue, "gather_distributed")
    assert find_queue(trainer, "x").consumers == ["OnlineKNN[name=s]"]
    assert registered.consumers == ["OnlineKNN[name=s]", "OnlineKNN[name=g]"]


def test_shard_and_gather_modes_agree_in_one_process(tiny, make_knn):
    features, labels = tiny.data(64, 4, 3)
    val_x, val_y = tiny.data(24, 4, 3, seed=1)

    class Both(L.Callback):
        def __init__(self):
            self.preds = []

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, idx=0):
            self.preds.append((batch["g_preds"], batch["s_preds"]))

    both = Both()
    callbacks = [make_knn(name="g"), make_knn(name="s", distributed="shard"), both]
    trainer = tiny.trainer(callbacks)
    trainer.fit(tiny.model(), tiny.loader(features, labels), tiny.loader(val_x, val_y))
    for gathered, sharded in both.preds:
        assert torch.equal(gathered, sharded)
    logged = trainer.callback_metrics
    assert logged["eval/g_accuracy"] == logged["eval/s_accuracy"]


@pytest.mark.parametrize(
    "settings",
    [
        {"average": "micro", "validate_args": False},  # would count the row as a miss
        {"average": "macro", "validate_args": False},  # fails inside torchmetrics
        {},  # torchmetrics' own argument check
    ],
    ids=["silent", "torchmetrics-crash", "torchmetrics-check"],
)
def test_a_label_beyond_num_classes_after_the_first_batch_fails_before_logging(
    tiny, settings, make_knn
):
    features, labels = tiny.data(64, 4, 3)
    val_x, val_y = tiny.data(24, 4, 3, seed=1)
    val_y = val_y.clone()
    val_y[20] = 7  # third batch: not read when the epoch's plan is made
    knn = make_knn(metrics={"accuracy": MulticlassAccuracy(3, **settings)})
    trainer = tiny.trainer([knn])
    match = r"OnlineKNN\[name=knn\]: a validation batch of 'label' holds label 7, but num_"
    with pytest.raises(ValueError, match=match):
        trainer.fit(tiny.model(), tiny.loader(features, labels), tiny.loader(val_x, val_y))
    assert "eval/knn_accuracy" not in trainer.callback_metrics


def test_non_finite_queue_rows_are_left_out_with_a_warning(tiny, messages, make_knn):
    features, labels = tiny.data(64, 4, 3)
    features[[40, 41, 63], 1] = torch.tensor([float("nan"), float("inf"), float("nan")])
    val_x, val_y = tiny.data(24, 4, 3, seed=1)
    trainer = tiny.trainer([make_knn()])
    trainer.fit(tiny.model(), tiny.loader(features, labels), tiny.loader(val_x, val_y))
    kept = torch.isfinite(features[-32:]).all(dim=1)
    scores = knn_predict(val_x, features[-32:][kept], labels[-32:][kept], 3, k=5)
    accuracy = (scores.argmax(dim=1) == val_y).float().mean()
    assert trainer.callback_metrics["eval/knn_accuracy"] == accuracy
    assert len([m for m in messages if "left out 3 queue rows of 'embedding'" in m]) == 1


def test_a_loader_with_non_finite_features_logs_nothing_that_epoch(tiny, messages, make_knn):
    features, labels = tiny.data(64, 4, 3)
    clean, clean_y = tiny.data(24, 4, 3, seed=1)
    broken = clean.clone()
    broken[13, 2] = float("nan")
    trainer = tiny.trainer([make_knn()])
    loaders = [tiny.loader(clean, clean_y), tiny.loader(broken, clean_y)]
    trainer.fit(tiny.model(), tiny.loader(features, labels), loaders)
    assert sorted(trainer.callback_metrics) == [
        "eval/knn_accuracy/dataloader_idx_0", "eval/knn_bank_classes", "eval/knn_bank_rows"
    ]  # fmt: skip
    (line,) = [m for m in messages if "non-finite" in m]
    assert "1 validation rows of 'embedding' (loader 1) had non-finite values" in line


def test_a_fit_without_validation_batches_says_knn_logs_nothing(tiny, messages, make_knn):
    features, labels = tiny.data(32, 4, 3)
    trainer = tiny.trainer([make_knn()], limit_val_batches=0)
    trainer.fit(tiny.model(), tiny.loader(features, labels), tiny.loader(features, labels))
    assert not trainer.callback_metrics
    assert len([m for m in messages if "no validation batch" in m and "eval/knn_*" in m]) == 1
