"""OnlineProbe with losses other than classification: regression, multi-label, soft labels
and reconstruction probes train, validate and log; no class-label check applies to them."""

import pytest
import torch
from torch import nn
from torchmetrics import MeanSquaredError
from torchmetrics.classification import MultilabelAccuracy

from spt_core import callbacks_modules
from spt_core.testing import DictDataset
from spt_probe import OnlineProbe


def targets(n: int = 48, seed: int = 0) -> DictDataset:
    """Dict rows with a class ``label`` and float targets: ``y`` (a regression value, shape
    (1,), far above 1), ``multi`` (three 0/1 labels), ``soft`` (class probabilities)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=generator) * 2
    return DictDataset(
        x=x,
        label=torch.arange(n) % 3,
        y=x @ torch.tensor([[3.0], [-1.0], [2.0], [0.5], [0.0], [1.0]]) + 7.0,
        multi=(x[:, :3] > 0).float(),
        soft=torch.softmax(x[:, :3], dim=1),
    )


def probes():
    """Each probe, and its module's starting weight."""
    torch.manual_seed(0)
    modules = {
        "regression": nn.Linear(5, 1),
        "multilabel": nn.Linear(5, 3),
        "soft": nn.Linear(5, 3),
        "reconstruction": nn.Linear(5, 6),
    }
    options = {
        "regression": {
            "target": "y", "loss_fn": nn.MSELoss(), "optimizer": {"type": "SGD", "lr": 0.01},
            "metrics": {"mse": MeanSquaredError()},
        },
        "multilabel": {
            "target": "multi", "loss_fn": nn.BCEWithLogitsLoss(),
            "metrics": {"accuracy": MultilabelAccuracy(3)},
        },
        "soft": {
            "target": "soft", "loss_fn": nn.CrossEntropyLoss(),
            "metrics": {"mse": MeanSquaredError()},
        },
        "reconstruction": {
            "target": "x", "loss_fn": nn.MSELoss(), "metrics": {"mse": MeanSquaredError()},
        },
    }  # fmt: skip
    every = {
        name: OnlineProbe(name=name, input="embedding", probe=module, **options[name])
        for name, module in modules.items()
    }
    starts = {name: module.weight.detach().clone() for name, module in modules.items()}
    return every, starts


def offline(name, probe, model, rows):
    """The metric each probe logs, recomputed from the trained probe over ``rows`` (a
    ``DictDataset``)."""
    columns = rows.columns
    with torch.no_grad():
        out = probe(model.encoder(columns["x"]))
    if name == "regression":
        return (out - columns["y"]).square().mean().item()
    if name == "multilabel":
        return ((out.sigmoid() > 0.5).float() == columns["multi"]).float().mean().item()
    if name == "soft":
        return (out - columns["soft"]).square().mean().item()
    return (out - columns["x"]).square().mean().item()


METRIC = {"regression": "mse", "multilabel": "accuracy", "soft": "mse", "reconstruction": "mse"}


def run_all(backbone, trainer, loader):
    """The four probes next to one backbone for two epochs, validated each epoch."""
    train, val = targets(seed=0), targets(n=32, seed=1)
    every, starts = probes()
    model = backbone()
    fit = trainer(callbacks=list(every.values()), max_epochs=2)
    fit.fit(model, loader(train), loader(val))
    return every, starts, model, fit, val


@pytest.mark.parametrize("name", list(METRIC))
def test_non_classification_probes_train_validate_and_log(backbone, trainer, loader, name):
    every, starts, model, fit, val = run_all(backbone, trainer, loader)
    probe = every[name]
    assert callbacks_modules(model)[name] is probe.module
    assert not torch.equal(probe.module.weight, starts[name])
    assert probe.optimizer_steps == 12
    assert torch.isfinite(fit.callback_metrics[f"train/{name}_loss"])
    key = f"eval/{name}_{METRIC[name]}"
    assert fit.callback_metrics[key].item() == pytest.approx(
        offline(name, probe.module, model, val), rel=1e-5, abs=1e-6
    )
    assert f"train/{name}_{METRIC[name]}" in fit.callback_metrics
