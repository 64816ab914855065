"""OnlineProbe on bad data: sizes, labels and non-finite features are reported, never
averaged into a logged value."""

import pytest
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from spt_core import callbacks_modules
from spt_core.testing import captured_logs
from spt_probe import OnlineProbe


def probe(**kwargs) -> OnlineProbe:
    metrics = {"accuracy": MulticlassAccuracy(3, average="micro", validate_args=False)}
    settings = {"input": "embedding", "target": "label", "probe": nn.Linear(5, 3)}
    return OnlineProbe(name="linear", **{"metrics": metrics, **settings, **kwargs})


def spoiled(backbone, stage, fault):
    """A backbone whose ``stage`` step outputs pass through ``fault(out)`` (label included)."""

    class Spoiled(backbone):
        def _step(self, batch):
            out = {**super()._step(batch), "label": batch["label"]}
            return fault(out) if (stage == "train") == self.training else out

    return Spoiled()


def wide(out):
    return {**out, "embedding": torch.cat([out["embedding"]] * 2, dim=1)}


def nan_first_row(out):
    embedding = out["embedding"].detach().clone()
    embedding[0, 0] = float("nan")
    return {**out, "embedding": embedding}


def label_seven(out):
    label = out["label"].clone()
    label[-1] = 7
    return {**out, "label": label}


@pytest.fixture
def lines():
    with captured_logs() as logged:
        yield logged


@pytest.mark.parametrize("stage", ["train", "val"])
def test_features_that_do_not_fit_the_probe_name_both_sizes(backbone, trainer, loader, data, stage):
    mlp = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    match = r"OnlineProbe\[name=linear\]: 'embedding' has 10 features per row, but the probe's "
    with pytest.raises(ValueError, match=match + "first layer takes 5"):
        trainer(callbacks=[probe(probe=mlp)]).fit(
            spoiled(backbone, stage, wide), loader(data), loader(data)
        )


@pytest.mark.parametrize("stage", ["train", "val"])
@pytest.mark.parametrize("validate_args", [False, True])
def test_a_label_without_an_output_is_an_error_before_its_value_is_logged(
    backbone, trainer, loader, data, stage, validate_args
):
    metrics = {"accuracy": MulticlassAccuracy(3, average="micro", validate_args=validate_args)}
    fit = trainer(callbacks=[probe(metrics=metrics)])
    where = "training" if stage == "train" else "validation"
    with pytest.raises(ValueError, match=rf"a {where} batch of 'label' holds label 7, but "
                       r"the probe.s output gives 3 classes \(labels must be < 3"):  # fmt: skip
        fit.fit(spoiled(backbone, stage, label_seven), loader(data), loader(data))
    assert f"{'train' if stage == 'train' else 'eval'}/linear_accuracy" not in fit.callback_metrics


def test_non_finite_training_rows_are_zeroed_and_the_epoch_has_no_train_metric(
    backbone, trainer, loader, data, lines
):
    model = spoiled(backbone, "train", nan_first_row)
    fit = trainer(callbacks=[probe()], max_epochs=2)
    fit.fit(model, loader(data), loader(data))
    assert all(torch.isfinite(p).all() for p in callbacks_modules(model)["linear"].parameters())
    assert set(fit.callback_metrics) == {"train/linear_loss", "eval/linear_accuracy"}
    assert torch.isfinite(fit.callback_metrics["train/linear_loss"])
    warned = [line for line in lines if "6 training rows of 'embedding' had non-finite" in line]
    assert len(warned) == 2  # 6 batches per epoch, one row each; once per epoch


def test_non_finite_rows_do_not_change_the_loss_of_the_others():
    from spt_probe import masked_cross_entropy

    logits, target = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    clean = masked_cross_entropy(logits[1:], target[1:])
    assert masked_cross_entropy(logits, torch.tensor([-1, 2, 1, 1])) == clean


def test_a_loader_with_non_finite_rows_logs_nothing_that_epoch(
    backbone, trainer, loader, make_data, lines
):
    first, second = make_data(n=24, seed=1), make_data(n=24, seed=2)
    second.columns["x"][5, 0] = float("nan")  # the embedding of that row is NaN
    fit = trainer(callbacks=[probe()])
    fit.fit(backbone(), loader(make_data()), [loader(first), loader(second)])
    assert "eval/linear_accuracy/dataloader_idx_0" in fit.callback_metrics
    assert "eval/linear_accuracy/dataloader_idx_1" not in fit.callback_metrics
    (line,) = [line for line in lines if "non-finite" in line]
    assert "1 validation rows of 'embedding' (loader 1) had non-finite values" in line


def test_a_fit_without_validation_batches_says_so(backbone, trainer, loader, data, lines):
    fit = trainer(callbacks=[probe()], limit_val_batches=0)
    fit.fit(backbone(), loader(data), loader(data))
    said = [line for line in lines if "no validation batch" in line and "eval/linear_*" in line]
    assert len(said) == 1
