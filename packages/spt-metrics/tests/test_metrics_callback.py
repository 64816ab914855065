"""MetricsCallback inside real single-process Trainers, compared with offline recomputations."""

from __future__ import annotations

import functools
import inspect

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset
from torchmetrics import Accuracy, F1Score, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

from spt_core.testing import captured_logs
from spt_metrics import MetricsCallback


def hit_rate(preds, target):
    """Accuracy of logits ``preds`` against ``target`` (numpy in, float out)."""
    assert isinstance(preds, np.ndarray) and isinstance(target, np.ndarray)
    return float((preds.argmax(-1) == target).mean())


def offline_accuracy(data, rows):
    rows = torch.as_tensor(rows)
    return float((data["logits"][rows].argmax(-1) == data["target"][rows]).float().mean())


class NoRows(IterableDataset):
    """A dataset without a length and without rows."""

    def __iter__(self):
        return iter([])


def outputs_for_preds(batch, module):
    return {"preds": batch["logits"], "target": batch["target"]}


# ------------------------------------------------------------------ construction


def test_signature_and_defaults_are_the_seeds():
    parameters = inspect.signature(MetricsCallback).parameters
    seed = {
        "needs": None,
        "compute_per_training_step": True,
        "compute_per_val_step": False,
        "compute_per_test_step": False,
        "compute_on_cpu": False,
        "every_n_train_steps": 1,
        "every_n_train_epochs": None,
        "every_n_val_epochs": 1,
        "on_test_end": False,
        "prog_bar": True,
    }
    names = list(parameters)
    assert names[: len(seed) + 1] == ["metrics", *seed]
    for name, default in seed.items():
        assert parameters[name].default == default, name
    assert parameters["name"].kind is inspect.Parameter.KEYWORD_ONLY


def test_train_schedules_are_exclusive_only_when_both_are_set():
    with pytest.raises(ValueError, match="every_n_train_steps=1 and every_n_train_epochs=2"):
        MetricsCallback(hit_rate, every_n_train_steps=1, every_n_train_epochs=2)
    only_epochs = MetricsCallback(hit_rate, every_n_train_epochs=2)
    assert (only_epochs.every_n_train_steps, only_epochs.every_n_train_epochs) == (0, 2)
    steps_off = MetricsCallback(hit_rate, every_n_train_steps=None, every_n_train_epochs=2)
    assert steps_off.every_n_train_steps == 0
    assert MetricsCallback(hit_rate, every_n_train_epochs=0).every_n_train_steps == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"every_n_val_epochs": -1}, ValueError, "every_n_val_epochs must be >= 0"),
        ({"every_n_train_steps": 1.5}, TypeError, "every_n_train_steps must be an int"),
        ({"every_n_train_epochs": True}, TypeError, "every_n_train_epochs must be an int"),
        ({"prog_bar": "yes"}, TypeError, "prog_bar must be a bool"),
        ({"compute_on_cpu": 1}, TypeError, "compute_on_cpu must be a bool"),
        ({"name": "a/b"}, ValueError, "name must be a non-empty string"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, error, match):
    with pytest.raises(error, match=match) as caught:
        MetricsCallback(hit_rate, **kwargs)
    if "name" not in kwargs:  # a bad name leaves no state_key to name
        assert str(caught.value).startswith("MetricsCallback[name=metrics]: ")


def test_bad_metrics_are_refused():
    with pytest.raises(TypeError, match=r"^MetricsCallback\[name=metrics\]: metrics\['x'\] must"):
        MetricsCallback({"x": 3})
    with pytest.raises(TypeError, match="not a class"):
        MetricsCallback([MulticlassAccuracy])
    with pytest.raises(ValueError, match="at least one metric"):
        MetricsCallback([])


def test_list_names_come_from_the_callables_and_are_unique():
    callback = MetricsCallback(
        [
            hit_rate,
            hit_rate,
            MulticlassAccuracy(num_classes=3),
            lambda preds, target: 0.0,
            functools.partial(alignment_score, alpha=1),
        ],
        every_n_train_epochs=1,
    )
    assert list(callback.metrics) == [
        "hit_rate",
        "hit_rate_2",
        "accuracy",
        "lambda",
        "alignment_score",
    ]


# ------------------------------------------------------------------ seed examples


def test_seed_example_classification_metrics_on_train_val_and_test(harness):
    # The seed's first example, corrected: torchmetrics' Accuracy/F1Score live in
    # ``torchmetrics`` and need a task; the outputs carry ``target`` (the name of the
    # parameter of ``update``), not ``targets``.
    metrics = {
        "acc": Accuracy(task="multiclass", num_classes=4),
        "f1": F1Score(task="multiclass", num_classes=4, average="macro"),
    }
    metrics_callback = MetricsCallback(
        metrics=metrics,
        every_n_train_epochs=1,
        every_n_val_epochs=1,
        on_test_end=True,
    )
    train = harness.classification(40, 4, correct=0.8, seed=1)
    val = harness.classification(24, 4, correct=0.4, seed=2)
    test = harness.classification(16, 4, correct=0.6, seed=3)
    module = harness.OutputsModule(outputs_for_preds)
    trainer = harness.make_trainer([metrics_callback], max_epochs=2)
    trainer.fit(
        module,
        harness.loader(harness.DictDataset(**train), 16),
        harness.loader(harness.DictDataset(**val), 10),
    )
    (tested,) = trainer.test(module, harness.loader(harness.DictDataset(**test), 6), verbose=False)
    logger = trainer.logger
    for stage, data, runs in (("train", train, 2), ("val", val, 2), ("test", test, 1)):
        acc = multiclass_accuracy(data["logits"], data["target"], 4, average="micro").item()
        f1 = multiclass_f1_score(data["logits"], data["target"], 4, average="macro").item()
        assert logger.values(f"acc/{stage}") == pytest.approx([acc] * runs, abs=1e-6)
        assert logger.values(f"f1/{stage}") == pytest.approx([f1] * runs, abs=1e-6)
    assert tested["acc/test"] == pytest.approx(logger.values("acc/test")[0])


def alignment_score(z1, z2, alpha=2):
    """Alignment of two views: mean ``||z1/|z1| - z2/|z2|||^alpha`` over rows (numpy)."""
    z1 = z1 / np.linalg.norm(z1, axis=1, keepdims=True)
    z2 = z2 / np.linalg.norm(z2, axis=1, keepdims=True)
    return float(np.mean(np.linalg.norm(z1 - z2, axis=1) ** alpha))


def test_seed_example_alignment_on_two_views_with_keyword_needs(harness):
    # The seed's second example, corrected: the key ``"alignment"`` is quoted and a comma
    # follows ``needs``; ``alignment_score`` is written above.
    metrics = {"alignment": alignment_score}
    metrics_callback = MetricsCallback(
        metrics=metrics,
        needs={
            "alignment": {"z1": "Z1", "z2": "Z2"},
        },
        every_n_train_epochs=1,
        every_n_val_epochs=None,
        on_test_end=False,
    )
    generator = torch.Generator().manual_seed(0)
    view = torch.randn(30, 5, generator=generator)
    data = {"v1": view, "v2": view + 0.5 * torch.randn(30, 5, generator=generator)}
    projection = torch.randn(5, 3, generator=generator)

    def encode(batch, module):
        return {"Z1": batch["v1"] @ projection, "Z2": batch["v2"] @ projection}

    module = harness.OutputsModule(encode)
    trainer = harness.make_trainer([metrics_callback], max_epochs=2)
    dataset = harness.DictDataset(**data)
    trainer.fit(module, harness.loader(dataset, 8), harness.loader(dataset, 8))
    trainer.test(module, harness.loader(dataset, 8), verbose=False)
    expected = alignment_score((view @ projection).numpy(), (data["v2"] @ projection).numpy())
    # batches of 8, 8, 8, 6: the weighted mean of per-step values is the mean over all rows
    assert trainer.logger.values("alignment/train") == pytest.approx([expected] * 2, rel=1e-5)
    assert trainer.logger.names() & {"alignment/val", "alignment/test"} == set()


# ------------------------------------------------------------------ stages and modes


def test_train_and_val_in_one_fit_each_see_exactly_their_samples(harness):
    train = harness.classification(48, 3, correct=0.75, seed=4)
    val = harness.classification(30, 3, correct=0.3, seed=5)
    callback = MetricsCallback(
        {"acc": MulticlassAccuracy(num_classes=3, average="micro"), "hits": hit_rate},
        every_n_train_epochs=1,
        compute_per_val_step=True,
    )
    exact = MetricsCallback(
        {"hits": hit_rate},
        compute_per_training_step=False,
        compute_on_cpu=True,
        every_n_train_epochs=1,
        name="exact",
    )
    module = harness.OutputsModule(outputs_for_preds)
    # validation twice per epoch, in the middle of the training epoch
    trainer = harness.make_trainer([callback, exact], max_epochs=2, val_check_interval=0.5)
    trainer.fit(
        module,
        harness.loader(harness.DictDataset(**train), 8),
        harness.loader(harness.DictDataset(**val), 7),
    )
    train_rows = torch.cat(module.seen["train"]).tolist()
    assert sorted(train_rows) == sorted(list(range(48)) * 2)
    train_acc = offline_accuracy(train, range(48))
    val_acc = offline_accuracy(val, range(30))
    assert abs(train_acc - val_acc) > 0.2
    logger = trainer.logger
    for name in ("acc", "hits"):
        assert logger.values(f"{name}/train") == pytest.approx([train_acc] * 2, abs=1e-6)
        assert logger.values(f"{name}/val") == pytest.approx([val_acc] * 4, abs=1e-6)
    assert callback.val_runs == 4 and callback.train_epochs == 2


def test_per_step_mode_weights_batches_by_size_with_a_short_last_batch(harness):
    # Batches of 4, 4, 2 rows: 4/4, 2/4 and 0/2 correct.
    target = torch.zeros(10, dtype=torch.long)
    pred = torch.tensor([0, 0, 0, 0, 0, 1, 0, 1, 1, 1])
    data = {"pred": pred, "target": target}
    seen = []

    def accuracy(y_true, y_pred, normalize=True):
        seen.append(len(y_true))
        return float((y_true == y_pred).mean())

    callback = MetricsCallback(
        accuracy, needs={"y_true": "target", "y_pred": "pred"}, every_n_train_epochs=1
    )
    trainer = harness.make_trainer([callback], max_epochs=1)
    trainer.fit(harness.OutputsModule(), harness.loader(harness.DictDataset(**data), 4))
    (logged,) = trainer.logger.values("accuracy/train")
    assert seen == [4, 4, 2]
    assert logged == pytest.approx(6 / 10)  # the unweighted mean of batches would be 0.5
    assert logged == pytest.approx(float((pred == target).float().mean()))


def test_step_windows_cover_every_n_batches_across_epochs(harness):
    data = harness.classification(10, 3, correct=0.5, seed=6)
    metrics = {"acc": MulticlassAccuracy(num_classes=3, average="micro"), "hits": hit_rate}
    per_step = MetricsCallback(metrics, every_n_train_steps=4, every_n_val_epochs=None)
    exact = MetricsCallback(
        {"hits": hit_rate},
        compute_per_training_step=False,
        every_n_train_steps=4,
        every_n_val_epochs=None,
        name="exact",
    )
    module = harness.OutputsModule(outputs_for_preds)
    trainer = harness.make_trainer([per_step, exact], max_epochs=3, log_every_n_steps=4)
    trainer.fit(module, harness.loader(harness.DictDataset(**data), 4))
    batches = module.seen["train"]  # 3 batches per epoch, 9 in all
    windows = [torch.cat(batches[0:4]), torch.cat(batches[4:8])]
    expected = [offline_accuracy(data, rows) for rows in windows]
    logger = trainer.logger
    assert logger.values("acc/train") == pytest.approx(expected, abs=1e-6)
    assert logger.values("hits/train") == pytest.approx(expected, abs=1e-6)
    assert [step for step, metrics in logger.records if "acc/train" in metrics] == [3, 7]
    assert per_step.train_batches == 9
    assert per_step.state_dict()["train_window"]["batches"] == 1


def test_a_metric_collection_logs_one_value_per_member(harness):
    data = harness.classification(20, 3, correct=0.6, seed=7)
    members = {"acc": MulticlassAccuracy(num_classes=3), "f1": MulticlassF1Score(num_classes=3)}
    named = MetricsCallback({"cls": MetricCollection(members)}, every_n_train_epochs=1)
    listed = MetricsCallback(
        [MetricCollection([MulticlassAccuracy(num_classes=3)], prefix="top1_")],
        every_n_train_epochs=1,
        name="listed",
    )
    trainer = harness.make_trainer([named, listed], max_epochs=1)
    dataset = harness.DictDataset(**data)
    trainer.fit(harness.OutputsModule(outputs_for_preds), harness.loader(dataset, 8))
    logger = trainer.logger
    acc = multiclass_accuracy(data["logits"], data["target"], 3).item()
    f1 = multiclass_f1_score(data["logits"], data["target"], 3).item()
    assert logger.values("cls_acc/train") == pytest.approx([acc])
    assert logger.values("cls_f1/train") == pytest.approx([f1])
    assert logger.values("top1_MulticlassAccuracy/train") == pytest.approx([acc])


def test_functions_get_numpy_on_cpu_and_torchmetrics_get_tensors(harness):
    seen_types = []

    class Probe(MulticlassAccuracy):
        def update(self, preds, target):
            seen_types.append((type(preds), preds.device.type))
            super().update(preds, target)

    def numpy_only(preds, target):
        seen_types.append((type(preds), "numpy"))
        return hit_rate(preds, target)

    data = harness.classification(12, 3, correct=0.5, seed=8)
    callback = MetricsCallback(
        {"probe": Probe(num_classes=3), "np": numpy_only}, every_n_train_epochs=1
    )
    trainer = harness.make_trainer([callback])
    trainer.fit(
        harness.OutputsModule(outputs_for_preds), harness.loader(harness.DictDataset(**data), 6)
    )
    assert set(seen_types) == {(torch.Tensor, "cpu"), (np.ndarray, "numpy")}


def test_sanity_check_neither_collects_nor_counts_and_every_n_val_epochs(harness):
    train = harness.classification(12, 3, correct=0.9, seed=9)
    val = harness.classification(12, 3, correct=0.2, seed=10)
    callback = MetricsCallback(hit_rate, every_n_train_epochs=1, every_n_val_epochs=2)
    trainer = harness.make_trainer([callback], max_epochs=4, num_sanity_val_steps=2)
    trainer.fit(
        harness.OutputsModule(outputs_for_preds),
        harness.loader(harness.DictDataset(**train), 6),
        harness.loader(harness.DictDataset(**val), 5),
    )
    # runs 2 and 4 log; the sanity check's two batches are not in the value
    assert trainer.logger.values("hit_rate/val") == pytest.approx(
        [offline_accuracy(val, range(12))] * 2
    )
    logged_epochs = [m["epoch"] for _, m in trainer.logger.records if "hit_rate/val" in m]
    assert logged_epochs == [1, 3]
    assert callback.val_runs == 4


def test_every_n_train_epochs_logs_the_mth_epochs(harness):
    data = harness.classification(12, 3, correct=0.5, seed=11)
    callback = MetricsCallback(hit_rate, every_n_train_epochs=2, every_n_val_epochs=None)
    trainer = harness.make_trainer([callback], max_epochs=5)
    trainer.fit(
        harness.OutputsModule(outputs_for_preds), harness.loader(harness.DictDataset(**data), 6)
    )
    epochs = [m["epoch"] for _, m in trainer.logger.records if "hit_rate/train" in m]
    assert epochs == [1, 3]
    assert callback.train_epochs == 5


def test_several_validation_loaders_keep_their_own_copies(harness):
    first = harness.classification(10, 3, correct=0.9, seed=12)
    second = harness.classification(14, 3, correct=0.2, seed=13)
    callback = MetricsCallback(
        {"acc": MulticlassAccuracy(num_classes=3, average="micro"), "hits": hit_rate},
        every_n_train_epochs=1,
    )
    trainer = harness.make_trainer([callback])
    trainer.fit(
        harness.OutputsModule(outputs_for_preds),
        harness.loader(harness.DictDataset(**first), 4),
        [
            harness.loader(harness.DictDataset(**first), 4),
            harness.loader(harness.DictDataset(**second), 4),
        ],
    )
    logger = trainer.logger
    for idx, data in enumerate((first, second)):
        expected = offline_accuracy(data, range(len(data["target"])))
        for name in ("acc", "hits"):
            assert logger.values(f"{name}/val/dataloader_idx_{idx}") == pytest.approx([expected])


def test_prog_bar_and_on_test_end(harness):
    data = harness.classification(12, 3, correct=0.5, seed=14)
    shown = MetricsCallback({"shown": hit_rate}, every_n_train_epochs=1)
    hidden = MetricsCallback(
        {"hidden": hit_rate},
        every_n_train_epochs=1,
        prog_bar=False,
        on_test_end=True,
        name="hidden",
    )
    trainer = harness.make_trainer([shown, hidden])
    loader = harness.loader(harness.DictDataset(**data), 6)
    module = harness.OutputsModule(outputs_for_preds)
    trainer.fit(module, loader, loader)
    assert {"shown/train", "shown/val"} <= set(trainer.progress_bar_metrics)
    assert not any(key.startswith("hidden") for key in trainer.progress_bar_metrics)
    assert "hidden/val" in trainer.callback_metrics
    (tested,) = trainer.test(module, loader, verbose=False)
    assert set(tested) == {"hidden/test"}


def test_an_empty_stage_logs_nothing_and_does_not_raise(harness):
    data = harness.classification(12, 3, correct=0.5, seed=15)
    callback = MetricsCallback(
        hit_rate, every_n_train_epochs=1, every_n_val_epochs=None, on_test_end=True
    )
    trainer = harness.make_trainer([callback])
    module = harness.OutputsModule(outputs_for_preds)
    trainer.fit(module, harness.loader(harness.DictDataset(**data), 6))
    # An iterable without rows: Lightning runs the test epoch, with no batch in it.
    tested = trainer.test(module, DataLoader(NoRows(), batch_size=6), verbose=False)
    assert tested == [{}]
    assert callback.compute_metrics_and_log(trainer, module, "val", False, True) == {}
    assert trainer.logger.names() & {"hit_rate/val", "hit_rate/test"} == set()


def test_a_missing_output_key_names_the_metric_and_lists_the_output_keys(harness):
    data = harness.classification(8, 3, correct=0.5, seed=16)
    callback = MetricsCallback({"acc": MulticlassAccuracy(num_classes=3)}, every_n_train_epochs=1)
    trainer = harness.make_trainer([callback])
    module = harness.OutputsModule(lambda batch, module: {"logits": batch["logits"]})
    with pytest.raises(KeyError, match=r"metric 'acc'.*'preds'.*\['logits', 'loss'\]"):
        trainer.fit(module, harness.loader(harness.DictDataset(**data), 4))


def test_callable_sources_preprocess_outputs(harness):
    data = harness.classification(16, 4, correct=0.7, seed=17)
    callback = MetricsCallback(
        [MulticlassAccuracy(num_classes=4, average="micro")],
        needs={"accuracy": [lambda out: out["logits"].softmax(-1), "target"]},
        every_n_train_epochs=1,
    )
    trainer = harness.make_trainer([callback])
    trainer.fit(harness.OutputsModule(), harness.loader(harness.DictDataset(**data), 5))
    assert trainer.logger.values("accuracy/train") == pytest.approx(
        [offline_accuracy(data, range(16))]
    )


@pytest.fixture
def messages():
    with captured_logs() as lines:
        yield lines


def test_skips_and_schedule_mismatches_are_said_once(harness, messages):
    data = harness.classification(12, 3, correct=0.5, seed=18)
    callback = MetricsCallback(hit_rate, every_n_train_steps=3, on_test_end=True)
    trainer = harness.make_trainer([callback], max_epochs=2, log_every_n_steps=5)
    module = harness.OutputsModule(outputs_for_preds)
    trainer.fit(module, harness.loader(harness.DictDataset(**data), 4))
    trainer.test(module, DataLoader(NoRows(), batch_size=4), verbose=False)
    said = [line for line in messages if "MetricsCallback[name=metrics]" in line]
    assert sum("only every 15th batch's value reaches the logger" in line for line in said) == 1
    assert sum("no test batch: nothing logged" in line for line in said) == 1


@pytest.mark.parametrize("every_n_val_epochs", [1, 0])
def test_a_fit_without_validation_batches_says_the_val_values_are_not_logged(
    harness, messages, every_n_val_epochs
):
    data = harness.classification(12, 3, correct=0.5, seed=20)
    callback = MetricsCallback(hit_rate, every_n_val_epochs=every_n_val_epochs)
    loader = harness.loader(harness.DictDataset(**data), 4)
    trainer = harness.make_trainer([callback], limit_val_batches=0)
    trainer.fit(harness.OutputsModule(outputs_for_preds), loader, loader)
    said = [line for line in messages if "runs no validation batch" in line]
    assert len(said) == every_n_val_epochs  # nothing to say when validation is off anyway
    assert all("the '/val' values will not be logged" in line for line in said)
    assert not [key for key in trainer.callback_metrics if "/val" in key]


def test_live_torchmetrics_copies_are_exposed_per_stage(harness):
    from spt_core import callbacks_metrics

    data = harness.classification(12, 3, correct=0.5, seed=19)
    callback = MetricsCallback({"acc": MulticlassAccuracy(num_classes=3)}, every_n_train_epochs=1)
    module = harness.OutputsModule(outputs_for_preds)
    loader = harness.loader(harness.DictDataset(**data), 4)
    harness.make_trainer([callback]).fit(module, loader, loader)
    exposed = callbacks_metrics(module)["metrics"]
    assert set(exposed) == {"train/0", "val/0"}
    assert exposed["train/0"]["acc"] is not exposed["val/0"]["acc"]
    assert "callbacks_metrics" not in dict(module.named_modules())


def test_copies_are_exposed_as_soon_as_they_exist(harness):
    from spt_core import callbacks_metrics

    data = harness.classification(12, 3, correct=0.5, seed=42)
    callback = MetricsCallback(
        {"acc": MulticlassAccuracy(num_classes=3), "hits": hit_rate},
        compute_per_training_step=False,
        every_n_train_steps=100,  # nothing is computed during this fit
        every_n_val_epochs=None,
    )
    module = harness.OutputsModule(outputs_for_preds)
    loader = harness.loader(harness.DictDataset(**data), 4)
    harness.make_trainer([callback]).fit(module, loader)
    exposed = callbacks_metrics(module)["metrics"]["train/0"]
    assert exposed["acc"].update_count == 3
    assert [len(rows) for rows in exposed["hits"].kwarg_preds] == [4, 4, 4]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_torchmetrics_stay_on_the_device_and_functions_get_numpy(harness):
    data = harness.classification(20, 3, correct=0.6, seed=30)
    devices = []

    class Probe(MulticlassAccuracy):
        def update(self, preds, target):
            devices.append(preds.device.type)
            super().update(preds, target)

    def half_precision(batch, module):
        return {"preds": batch["logits"].to(torch.bfloat16), "target": batch["target"]}

    metrics = {"probe": Probe(num_classes=3, average="micro"), "hits": hit_rate}
    exact = MetricsCallback(
        metrics, compute_per_training_step=False, compute_on_cpu=True, every_n_train_steps=100
    )
    per_step = MetricsCallback({"hits": hit_rate}, every_n_train_epochs=1, name="per_step")
    trainer = harness.make_trainer([exact, per_step], accelerator="gpu")
    module = harness.OutputsModule(half_precision)
    trainer.fit(module, harness.loader(harness.DictDataset(**data), 8))
    assert set(devices) == {"cuda"}
    from spt_core import callbacks_metrics

    hits = callbacks_metrics(module)["metrics"]["train/0"]["hits"]  # open: 3 of 100 batches
    chunks = [*hits.kwarg_preds, *hits.kwarg_target]
    assert len(chunks) == 6 and {rows.device.type for rows in chunks} == {"cpu"}
    assert callbacks_metrics(module)["metrics"]["train/0"]["probe"].device.type == "cuda"
    expected = offline_accuracy(data, range(20))
    assert trainer.logger.values("hits/train") == pytest.approx([expected], abs=1e-6)


def test_scikit_learn_metrics_with_inferred_needs_match_scikit_learn_offline(harness):
    metrics = pytest.importorskip("sklearn.metrics")
    train = harness.classification(30, 2, correct=0.8, seed=31)
    val = harness.classification(26, 2, correct=0.55, seed=32)

    def outputs(batch, module):
        return {
            "y_true": batch["target"],
            "y_pred": batch["logits"].argmax(-1),
            "y_score": batch["logits"].softmax(-1)[:, 1],
        }

    callback = MetricsCallback(
        [
            metrics.accuracy_score,
            metrics.roc_auc_score,
            functools.partial(metrics.fbeta_score, beta=2),
        ],
        every_n_train_epochs=1,
    )
    trainer = harness.make_trainer([callback])
    trainer.fit(
        harness.OutputsModule(outputs),
        harness.loader(harness.DictDataset(**train), 8),
        harness.loader(harness.DictDataset(**val), 8),
    )
    data = val  # validation is exact by default: every score equals scikit-learn's
    y_true, y_pred = data["target"].numpy(), data["logits"].argmax(-1).numpy()
    y_score = data["logits"].softmax(-1)[:, 1].numpy()
    logger = trainer.logger
    assert logger.values("accuracy_score/val") == pytest.approx(
        [metrics.accuracy_score(y_true, y_pred)], abs=1e-6
    )
    assert logger.values("roc_auc_score/val") == pytest.approx(
        [metrics.roc_auc_score(y_true, y_score)], abs=1e-6
    )
    assert logger.values("fbeta_score/val") == pytest.approx(
        [metrics.fbeta_score(y_true, y_pred, beta=2)], abs=1e-6
    )
    # training is per step by default: accuracy (a mean over rows) is still exact
    train_true, train_pred = train["target"].numpy(), train["logits"].argmax(-1).numpy()
    assert logger.values("accuracy_score/train") == pytest.approx(
        [metrics.accuracy_score(train_true, train_pred)], abs=1e-6
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_a_training_batch_of_torchmetrics_makes_no_host_sync(harness):
    from torchmetrics import Metric

    class RowSum(Metric):  # no input validation of its own that could sync
        def __init__(self):
            super().__init__()
            self.num_classes = 3  # the callback checks its labels, on the device
            self.add_state("total", torch.zeros(()), dist_reduce_fx="sum")

        def update(self, preds, target):
            self.total += preds.sum() + target.sum()

        def compute(self):
            return self.total

    class Strict(MetricsCallback):  # the first batch creates the copies: every later one
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            torch.cuda.set_sync_debug_mode("error" if batch_idx else "default")
            try:
                super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            finally:
                torch.cuda.set_sync_debug_mode("default")

    data = harness.classification(12, 3, correct=0.5, seed=41)
    callback = Strict({"sum": RowSum()}, every_n_train_epochs=1)
    trainer = harness.make_trainer([callback], accelerator="gpu")
    loader = harness.loader(harness.DictDataset(**data), 4)
    trainer.fit(harness.OutputsModule(outputs_for_preds), loader)
    expected = float(data["logits"].sum() + data["target"].sum())
    assert trainer.logger.values("sum/train") == pytest.approx([expected], rel=1e-5)
