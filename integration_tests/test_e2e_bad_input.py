"""Bad input through a real Trainer: every mistake gives a clear error naming the callback,
or a documented skip with a log line; never a hang, never a wrong number logged."""

import math
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from spt_knn import OnlineKNN, knn_predict
from spt_latentviz import LatentViz, projection_mlp
from spt_probe import OnlineProbe
from spt_queue import find_queue

sys.path.insert(0, str(Path(__file__).parent / "scenarios"))  # e2e_setup, shared with scenarios
import e2e_setup as e2e

from spt_core.testing import captured_logs

# What OnlineKNN, the probes and MetricsCallback compute from validation batches.
FROM_VALIDATION = (
    "eval/knn_accuracy",
    "eval/linear_accuracy",
    "eval/mlp_accuracy",
    "probe_accuracy/val",
    "embedding_norm/val",
)
STEP_KEYS = r"step outputs \(keys: \['embedding', 'label', 'loss'\]\) nor in the batch \(keys: \['index', 'label', 'x'\]\)"  # noqa: E501


@pytest.fixture
def lines():
    """Every loguru line logged while the test runs."""
    with captured_logs() as logged:
        yield logged


def pick(*names, tmp_path=None):
    """The shared callbacks (see ``e2e_setup.callbacks``) with these names."""
    return [c for c in e2e.callbacks(save_dir=tmp_path) if c.name in names]


def fit(callbacks, model=None, epochs=1, datamodule=None, **kwargs):
    """Fit from seed 0 and return the Trainer (also when the fit raises: see ``trainer``)."""
    L.seed_everything(0, verbose=False)
    trainer = e2e.make_trainer(max_epochs=epochs, callbacks=callbacks, **kwargs)
    fit.trainer = trainer
    trainer.fit(model or e2e.Backbone(), datamodule=datamodule or e2e.Rows(batch_size=8))
    return trainer


# ---------------------------------------------------------------------------- missing keys


@pytest.mark.parametrize(
    ("callback", "match"),
    [
        (
            lambda: OnlineProbe(
                name="linear", input="feats", target="label", probe=nn.Linear(8, 3)
            ),
            r"OnlineProbe\[name=linear\] needs the key 'feats'",
        ),
        (
            lambda: OnlineKNN("knn", "embedding", "labels", 16, {}, num_classes=3),
            r"\(filled for OnlineKNN\[name=knn\]\) needs the key 'labels'",
        ),
        (
            lambda: LatentViz(
                "viz", "feats", "label", projection_mlp(8), queue_length=16, k_neighbors=5
            ),
            r"\(filled for LatentViz\[name=viz\]\) needs the key 'feats'",
        ),
        (  # MetricsCallback without the probe whose predictions it reads
            lambda: pick("metrics")[0],
            r"MetricsCallback\[name=metrics\] \(metric 'probe_accuracy'\) needs the key 'linear_preds'",  # noqa: E501
        ),
    ],
    ids=["probe", "knn", "latentviz", "metrics"],
)
def test_a_missing_key_names_the_callback_and_the_keys_there_are(callback, match):
    with pytest.raises(KeyError, match=f"{match}, which is neither in the {STEP_KEYS}"):
        fit([callback()])


# ---------------------------------------------------------------------------- feature sizes


@pytest.mark.parametrize(
    ("names", "where", "match"),
    [
        (
            ["linear"],
            "train",
            r"OnlineProbe\[name=linear\]: 'embedding' has 16 features per row, but the probe's "
            r"first layer takes 8",
        ),
        (
            ["mlp"],
            "val",
            r"OnlineProbe\[name=mlp\]: 'embedding' has 16 features per row, but the probe's "
            r"first layer takes 8",
        ),
        (
            ["knn"],
            "val",
            r"OnlineKNN\[name=knn\]: 'embedding' has 16 features per row, the queue holds rows "
            r"of 8",
        ),
        (
            ["viz"],
            "train",
            r"LatentViz\[name=viz\]: 'embedding' has 16 features per row, but the projection's "
            r"first layer takes 8",
        ),
    ],
    ids=["probe-train", "mlp-val", "knn-val", "latentviz-train"],
)
def test_a_wrong_feature_size_names_the_callback_and_both_sizes(tmp_path, names, where, match):
    with pytest.raises(ValueError, match=match):
        fit(pick(*names, tmp_path=tmp_path), e2e.Faulty(e2e.wide(where)))


# ---------------------------------------------------------------------------- labels


@pytest.mark.parametrize(
    ("names", "fault", "match", "unlogged"),
    [
        (  # the first validation batch is checked at once, later ones at the epoch's end
            ["knn"],
            e2e.relabel("val", 2, 5),
            r"OnlineKNN\[name=knn\]: a validation batch of 'label' holds label 5, but "
            r"num_classes gives 3 classes .* make it at least 6",
            "eval/knn_accuracy",
        ),
        (  # the last training batch is in the queue the bank is read from
            ["knn"],
            e2e.relabel("train", 7, 5),
            r"OnlineKNN\[name=knn\]: the queue of 'label' holds label 5, but num_classes gives 3",
            "eval/knn_accuracy",
        ),
        (
            ["linear"],
            e2e.relabel("train", 2, 5),
            r"OnlineProbe\[name=linear\]: a training batch of 'label' holds label 5, but "
            r"the probe.s output gives 3 classes",
            "train/linear_accuracy",
        ),
        (
            ["linear", "mlp"],
            e2e.relabel("val", 2, 3),
            r"OnlineProbe\[name=linear\]: a validation batch of 'label' holds label 3, but "
            r"the probe.s output gives 3 classes",
            "eval/linear_accuracy",
        ),
    ],
    ids=["knn-val", "knn-bank", "probe-train", "probe-val"],
)
def test_a_label_outside_the_classes_is_an_error_before_its_value_is_logged(
    tmp_path, names, fault, match, unlogged
):
    with pytest.raises(ValueError, match=match):
        fit(pick(*names, tmp_path=tmp_path), e2e.Faulty(fault))
    assert unlogged not in fit.trainer.callback_metrics


# ---------------------------------------------------------------------------- NaN features


def test_nan_validation_features_skip_the_epochs_values_with_a_warning(tmp_path, lines):
    trainer = fit(
        pick("knn", "linear", "mlp", tmp_path=tmp_path), e2e.Faulty(e2e.nan_row("val", 1))
    )
    assert not set(trainer.callback_metrics) & set(FROM_VALIDATION)
    for name, says in (("knn", "their scores"), ("linear", "the probe"), ("mlp", "the probe")):
        (line,) = [line for line in lines if f"[name={name}]: 1 validation rows" in line]
        assert f"had non-finite values: {says}" in line
        assert f"eval/{name}_* is not logged" in line
    assert math.isfinite(trainer.callback_metrics["train/linear_accuracy"])


def test_nan_rows_in_the_knn_bank_are_left_out_with_a_warning(tmp_path, lines):
    model = e2e.Faulty(e2e.nan_row("train", 7))  # the last batch: in the queue of 32 rows
    trainer = fit(pick("knn", tmp_path=tmp_path), model)
    (line,) = [line for line in lines if "OnlineKNN[name=knn]: left out" in line]
    assert "left out 1 queue rows of 'embedding' with non-finite values" in line
    bank = find_queue(trainer, "embedding").read(32)
    labels = find_queue(trainer, "label").read(32)
    finite = torch.isfinite(bank).all(dim=1)
    assert finite.sum() == 31
    validation = e2e.Rows().validation
    model.eval()
    with torch.no_grad():
        scores = torch.cat(
            [
                knn_predict(model(x), bank[finite], labels[finite], 3, k=5, temperature=0.5)
                for x in validation.features.split(8)
            ]
        )
    accuracy = (scores.argmax(dim=1) == validation.labels).float().mean().item()
    assert trainer.callback_metrics["eval/knn_accuracy"].item() == pytest.approx(accuracy)


def test_nan_training_features_never_reach_the_probe(tmp_path, lines):
    trainer = fit(
        pick("linear", "mlp", tmp_path=tmp_path), e2e.Faulty(e2e.nan_row("train", 2)), epochs=2
    )
    for probe in trainer.lightning_module.callbacks_modules.values():
        assert all(torch.isfinite(p).all() for p in probe.parameters())
    logged = e2e.logged(trainer)
    assert "train/linear_accuracy" not in logged  # its epoch had a row it could not score
    assert all(math.isfinite(v) for v in logged.values())
    chance = 1 / e2e.CLASSES  # both probes still learn from the clean rows
    assert logged["eval/linear_accuracy"] > chance and logged["eval/mlp_accuracy"] > chance
    warned = [line for line in lines if "1 training rows of 'embedding' had non-finite" in line]
    assert len(warned) == 4  # two probes, two epochs


def test_nan_features_are_left_out_of_the_latent_map_as_documented(tmp_path, lines):
    trainer = fit(pick("viz", tmp_path=tmp_path), e2e.Faulty(e2e.nan_row("train", 7)))
    assert 0.0 <= trainer.callback_metrics["eval/viz_trustworthiness"].item() <= 1.0
    assert math.isfinite(trainer.callback_metrics["train/viz_loss"])
    assert any("rows with non-finite values are left out" in line for line in lines)


# ---------------------------------------------------------------------------- no validation


class NoValidationRows(e2e.Rows):
    def val_dataloader(self):
        return DataLoader(Subset(self.validation, []), batch_size=8)


@pytest.mark.parametrize(
    "settings",
    [{"datamodule": NoValidationRows()}, {"limit_val_batches": 0}],
    ids=["empty-loader", "limit-0"],
)
def test_no_validation_logs_no_eval_value_and_says_so(tmp_path, lines, settings):
    trainer = fit(e2e.callbacks(save_dir=tmp_path), epochs=2, **settings)
    logged = e2e.logged(trainer)
    assert not set(logged) & set(FROM_VALIDATION)
    assert {"train/linear_accuracy", "probe_accuracy/train", "train/viz_loss"} <= set(logged)
    # LatentViz draws its map from the training queue at the end of each training epoch.
    assert 0.0 <= logged["eval/viz_trustworthiness"] <= 1.0
    for owner in (
        "OnlineKNN[name=knn]",
        "OnlineProbe[name=linear]",
        "MetricsCallback[name=metrics]",
    ):
        said = [line for line in lines if owner in line and "runs no validation batch" in line]
        assert len(said) == 1, owner


# ---------------------------------------------------------------------------- names


def test_two_spt_callbacks_with_one_name_are_refused_before_anything_is_logged():
    knn = OnlineKNN("x", "embedding", "label", 16, {}, num_classes=3)
    probe = OnlineProbe(name="x", input="embedding", target="label", probe=nn.Linear(8, 3))
    clash = r"OnlineKNN\[name=x\]: another spt callback \(OnlineProbe\[name=x\]\)"
    with pytest.raises(ValueError, match=clash):
        fit([knn, probe])
    assert not fit.trainer.logged_metrics
