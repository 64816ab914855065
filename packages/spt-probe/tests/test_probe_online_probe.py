"""OnlineProbe's contract: signature, validation, logging names, lifecycle across Trainers."""

import copy
import csv
import inspect
import pickle
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, Logger
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

import spt_probe
from spt_core import SPTCallback, callbacks_metrics, callbacks_modules
from spt_core.testing import SyncFreeAccuracy
from spt_probe import OnlineProbe
from spt_trainable import LARS, TrainableCallback


def accuracy(n: int = 3, top_k: int = 1) -> MulticlassAccuracy:
    return MulticlassAccuracy(n, top_k=top_k, average="micro", validate_args=False)


def linear_probe(name: str = "linear", **kwargs) -> OnlineProbe:
    settings = {"input": "embedding", "target": "label", "probe": nn.Linear(5, 3)}
    settings.update(kwargs)
    return OnlineProbe(name=name, **settings)


def offline_accuracy(probe: nn.Module, model, dataset, top_k: int = 1) -> float:
    """Accuracy of the trained probe on the backbone's features of ``dataset``."""
    with torch.no_grad():
        logits = probe(model.encoder(dataset.columns["x"]))
    hits = logits.topk(top_k, dim=1).indices.eq(dataset.columns["label"][:, None]).any(dim=1)
    return hits.float().mean().item()


class Recorder(L.Callback):
    """Keeps the batch dicts it sees after the probes ran (callbacks run in list order)."""

    def __init__(self):
        self.train, self.val = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.train.append(dict(batch))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, idx=0):
        self.val.append(dict(batch))


# ----------------------------------------------------------------------------- signature


def test_signature_is_the_reference_one_plus_keyword_options():
    parameters = inspect.signature(OnlineProbe).parameters
    assert list(parameters) == [
        "module", "name", "input", "target", "probe", "loss_fn", "optimizer", "scheduler",
        "accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm", "metrics",
        "clean_loader", "clean_every_n_epochs", "clean_epochs", "clean_batch_size",
        "clean_optimizer", "clean_seed", "clean_embed", "verbose",
    ]  # fmt: skip
    defaults = {k: p.default for k, p in parameters.items()}
    assert defaults["module"] is None and defaults["loss_fn"] is None
    assert defaults["accumulate_grad_batches"] == 1
    assert defaults["gradient_clip_algorithm"] == "norm"
    assert defaults["metrics"] is None and defaults["verbose"] is None


def test_the_seed_order_is_positional_and_every_extra_parameter_keyword_only():
    parameters = inspect.signature(OnlineProbe).parameters.values()
    positional = [p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == [
        "module", "name", "input", "target", "probe", "loss_fn", "optimizer", "scheduler",
        "accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm", "metrics",
    ]  # fmt: skip
    assert [p.name for p in parameters if p.kind is p.KEYWORD_ONLY] == [
        "clean_loader", "clean_every_n_epochs", "clean_epochs", "clean_batch_size",
        "clean_optimizer", "clean_seed", "clean_embed", "verbose",
    ]  # fmt: skip
    seed = (None, "p", "x", "y", nn.Linear(2, 2), None, None, None, 1, None, "norm", None)
    assert OnlineProbe(*seed).gradient_clip_algorithm == "norm"
    with pytest.raises(TypeError, match="positional"):
        OnlineProbe(*seed, True)
    assert OnlineProbe(*seed, verbose=True).verbose is True


def test_positional_call_with_the_module_first(backbone):
    model = backbone()
    probe = OnlineProbe(model, "lin", "embedding", "label", nn.Linear(5, 3))
    assert (probe.name, probe.input, probe.target) == ("lin", "embedding", "label")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"name": None}, TypeError, "'name'"),
        ({"input": None}, TypeError, "'input'"),
        ({"target": None}, TypeError, "'target'"),
        ({"probe": None}, TypeError, "'probe'"),
        # One rule with SPTCallback's name: a wrong type is a TypeError, an empty key a
        # ValueError; both name the probe.
        ({"input": ""}, ValueError, r"OnlineProbe\[name=p\]: input must be a non-empty str"),
        ({"target": ""}, ValueError, r"OnlineProbe\[name=p\]: target must be a non-empty str"),
        ({"input": 3}, TypeError, r"OnlineProbe\[name=p\]: input must be a non-empty str"),
        ({"name": ""}, ValueError, "non-empty"),
        ({"name": 3}, TypeError, "name must be"),
        ({"probe": 3}, TypeError, "probe must be"),
        ({"module": "lin"}, TypeError, "module must be the LightningModule"),
        ({"loss_fn": 2.0}, TypeError, "loss_fn"),
        ({"optimizer": "Adamm"}, ValueError, "not a known optimizer"),
        ({"optimizer": {"type": "SGD", "rl": 1}}, TypeError, "takes no argument"),
        ({"scheduler": "LambdaLR"}, TypeError, "needs \\['lr_lambda'\\]"),
        ({"scheduler": "ReduceLROnPlateau"}, ValueError, "monitor"),
        ({"accumulate_grad_batches": 0}, ValueError, "accumulate_grad_batches"),
        ({"gradient_clip_val": -1.0}, ValueError, "gradient_clip_val"),
        ({"gradient_clip_algorithm": "l1"}, ValueError, "gradient_clip_algorithm"),
        ({"metrics": [object()]}, TypeError, r"OnlineProbe\[name=p\]: .*update/compute/reset"),
        ({"name": "a/b"}, ValueError, "without '/'"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, error, match):
    settings = {"name": "p", "input": "embedding", "target": "label", "probe": nn.Linear(5, 3)}
    settings.update(kwargs)
    with pytest.raises(error, match=match):
        OnlineProbe(**settings)


def test_default_optimizer_is_lars_with_the_documented_settings(backbone, trainer, loader, data):
    probe = linear_probe()
    trainer(callbacks=[probe], max_steps=1).fit(backbone(), loader(data))
    assert type(probe.optimizer) is LARS
    # The seed's LARS(lr=0.1, clip_lr=True, eta=0.02, exclude_bias_n_norm=True,
    # weight_decay=0), without momentum; every value is spelled out in the docstring.
    documented = {
        "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0, "eta": 0.02, "eps": 1e-8,
        "clip_lr": True, "exclude_bias_n_norm": True, "nesterov": False, "dampening": 0.0,
    }  # fmt: skip
    (group,) = probe.optimizer.param_groups
    assert {key: group[key] for key in group if key not in ("params", "initial_lr")} == documented
    assert probe.optimizer.state_dict()["state"] == {}  # no momentum buffer
    for key, value in documented.items():
        shown = str(value) if isinstance(value, bool) else f"{value:g}".replace("e-08", "e-8")
        for doc in (OnlineProbe.__doc__, OnlineProbe.default_optimizer.__doc__):
            assert f"{key}={shown}" in " ".join(doc.split()), key
    assert type(probe.scheduler).__name__ == "ConstantLR"
    assert probe.scheduler.get_last_lr() == [0.1]


def test_given_module_must_be_the_trained_one(backbone, trainer, loader, data):
    model = backbone()
    trainer(callbacks=[OnlineProbe(model, "lin", "embedding", "label", nn.Linear(5, 3))],
            max_steps=1).fit(model, loader(data))  # fmt: skip
    stranger = OnlineProbe(backbone(), "lin", "embedding", "label", nn.Linear(5, 3))
    with pytest.raises(ValueError, match="different LightningModule"):
        trainer(callbacks=[stranger], max_steps=1).fit(model, loader(data))


def test_missing_key_names_the_probe(backbone, trainer, loader, data):
    with pytest.raises(KeyError, match=r"OnlineProbe\[name=linear\].*'features'"):
        trainer(callbacks=[linear_probe(input="features")], max_steps=1).fit(
            backbone(), loader(data)
        )


def test_two_trainable_callbacks_with_one_name_are_refused(backbone, trainer, loader, data):
    # Two OnlineProbes with one name already share a state_key, which Lightning refuses; a
    # different trainable callback with the probe's name would take its callbacks_modules slot.
    other = TrainableCallback("linear", module=nn.Linear(5, 3))
    with pytest.raises(ValueError, match=r"another spt callback \(TrainableCallback\[name=linear"):
        trainer(callbacks=[linear_probe(), other], max_steps=1).fit(backbone(), loader(data))


# ----------------------------------------------------------------------------- logging


def test_logged_names_predictions_and_offline_agreement(backbone, trainer, loader, data):
    probe = linear_probe(metrics=[accuracy(), accuracy(top_k=2)], optimizer="SGD")
    recorder = Recorder()
    model = backbone()
    fit = trainer(callbacks=[probe, recorder], max_epochs=2, log_every_n_steps=1)
    fit.fit(model, loader(data), loader(data))
    assert set(fit.callback_metrics) == {
        "train/linear_loss", "train/linear_loss_step",
        "train/linear_accuracy", "train/linear_accuracy_top2",
        "eval/linear_accuracy", "eval/linear_accuracy_top2",
    }  # fmt: skip
    trained = callbacks_modules(model)["linear"]
    for top_k, key in ((1, "eval/linear_accuracy"), (2, "eval/linear_accuracy_top2")):
        assert fit.callback_metrics[key].item() == pytest.approx(
            offline_accuracy(trained, model, data, top_k), abs=1e-6
        )
    assert all(batch["linear_preds"].shape == (8, 3) for batch in recorder.train + recorder.val)
    last = recorder.val[-1]
    with torch.no_grad():
        expected = trained(model.encoder(last["x"]))
    torch.testing.assert_close(last["linear_preds"], expected)


class StepValues(Logger):
    """What reaches a logger, as ``(step, name, value)`` rows."""

    name = "steps"
    version = 0

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int | None, str, float]] = []

    def log_hyperparams(self, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.extend((step, key, value) for key, value in metrics.items())


def test_loss_reaches_the_logger_every_n_steps_and_as_the_epoch_mean(
    backbone, trainer, loader, make_data
):
    losses = []

    def recorded(logits, target):
        loss = nn.functional.cross_entropy(logits, target)
        losses.append((loss.item(), len(target)))
        return loss

    logger = StepValues()
    fit = trainer(
        callbacks=[linear_probe(loss_fn=recorded)], max_epochs=2, logger=logger, log_every_n_steps=3
    )
    fit.fit(backbone(), loader(make_data(n=36)))  # 5 batches per epoch, the last of 4 rows
    steps = [(step, value) for step, key, value in logger.rows if key == "train/linear_loss_step"]
    assert [step for step, _ in steps] == [2, 5, 8]
    assert [value for _, value in steps] == pytest.approx([losses[i][0] for i in (2, 5, 8)])
    epochs = [value for _, key, value in logger.rows if key == "train/linear_loss"]
    assert len(epochs) == 2
    for epoch, value in enumerate(epochs):
        part = losses[5 * epoch : 5 * epoch + 5]
        mean = sum(loss * rows for loss, rows in part) / sum(rows for _, rows in part)
        assert value == pytest.approx(mean)


def test_stages_own_separate_metric_copies(backbone, trainer, loader, data):
    probe = linear_probe(metrics={"acc": accuracy()})
    model = backbone()
    fit = trainer(callbacks=[probe])
    fit.fit(model, loader(data), loader(data))
    fit.test(model, loader(data), verbose=False)
    live = callbacks_metrics(model)["linear"]
    assert set(live) == {"train/0", "val/0", "test/0"}
    objects = [live[stage]["acc"] for stage in live]
    assert len({id(m) for m in objects}) == 3
    assert fit.callback_metrics["eval/linear_acc"].item() == pytest.approx(
        offline_accuracy(callbacks_modules(model)["linear"], model, data), abs=1e-6
    )


def test_several_validation_loaders_get_lightnings_suffix(backbone, trainer, loader, make_data):
    first, second = make_data(n=24, seed=1), make_data(n=24, seed=2)
    probe = linear_probe(metrics=[accuracy()])
    model = backbone()
    fit = trainer(callbacks=[probe])
    fit.fit(model, loader(make_data()), [loader(first), loader(second)])
    trained = callbacks_modules(model)["linear"]
    for idx, dataset in enumerate((first, second)):
        assert fit.callback_metrics[f"eval/linear_accuracy/dataloader_idx_{idx}"].item() == (
            pytest.approx(offline_accuracy(trained, model, dataset), abs=1e-6)
        )


def test_linear_and_mlp_probes_coexist(backbone, trainer, loader, data):
    mlp = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))
    probes = [
        linear_probe("linear", metrics=[accuracy()]),
        linear_probe("mlp", probe=mlp, metrics=[accuracy()], optimizer={"type": "AdamW"}),
    ]
    model = backbone()
    before = copy.deepcopy(mlp.state_dict())
    fit = trainer(callbacks=probes, max_epochs=2)
    fit.fit(model, loader(data), loader(data))
    assert set(callbacks_modules(model)) == {"linear", "mlp"}
    assert callbacks_modules(model)["mlp"] is mlp
    assert not torch.equal(mlp.state_dict()["0.weight"], before["0.weight"])
    for name in ("linear", "mlp"):
        assert f"eval/{name}_accuracy" in fit.callback_metrics
        assert f"train/{name}_loss" in fit.callback_metrics
    assert type(probes[1].optimizer).__name__ == "AdamW"


# ----------------------------------------------------------------------------- lifecycle


def test_validate_and_test_after_fit_use_the_trained_probe(backbone, trainer, loader, data):
    probe = linear_probe(metrics=[accuracy()])
    model = backbone()
    fit = trainer(callbacks=[probe], max_epochs=2)
    fit.fit(model, loader(data))
    weights = probe.module.weight.detach().clone()
    expected = offline_accuracy(probe.module, model, data)
    (validated,) = fit.validate(model, loader(data), verbose=False)
    (tested,) = fit.test(model, loader(data), verbose=False)
    assert validated["eval/linear_accuracy"] == pytest.approx(expected, abs=1e-6)
    assert tested["eval/linear_accuracy"] == pytest.approx(expected, abs=1e-6)
    assert torch.equal(probe.module.weight, weights)  # evaluation never trains


def test_second_trainer_continues_like_one_longer_fit(backbone, trainer, loader, data):
    torch.manual_seed(0)
    straight_model, straight = backbone(), linear_probe()
    trainer(callbacks=[straight], max_epochs=2).fit(straight_model, loader(data))

    torch.manual_seed(0)
    model, probe = backbone(), linear_probe()
    trainer(callbacks=[probe], max_epochs=1).fit(model, loader(data))
    trainer(callbacks=[probe], max_epochs=1).fit(model, loader(data))
    assert probe.optimizer_steps == straight.optimizer_steps == 12
    assert torch.equal(probe.module.weight, straight.module.weight)
    assert torch.equal(probe.module.bias, straight.module.bias)


def test_lightning_module_pickles_and_keeps_the_probe_out_of_its_state(
    backbone, trainer, loader, data
):
    model = backbone()
    keys = set(model.state_dict())
    n_params = len(list(model.parameters()))
    trainer(callbacks=[linear_probe(metrics=[accuracy()])]).fit(model, loader(data), loader(data))
    assert set(model.state_dict()) == keys
    assert len(list(model.parameters())) == n_params
    clone = pickle.loads(pickle.dumps(model))
    torch.testing.assert_close(
        clone.callbacks_modules["linear"].state_dict(),
        model.callbacks_modules["linear"].state_dict(),
    )
    assert set(clone.callbacks_metrics["linear"]) == {"train/0", "val/0"}


def test_batch_hooks_never_synchronise_with_the_host(backbone, trainer, loader, data, no_host_sync):
    probe = linear_probe(
        metrics=[SyncFreeAccuracy()], accumulate_grad_batches=2, gradient_clip_val=1.0
    )
    probe.on_train_batch_end = no_host_sync(probe.on_train_batch_end)
    probe.on_validation_batch_end = no_host_sync(probe.on_validation_batch_end)
    fit = trainer(callbacks=[probe])
    fit.fit(backbone(), loader(data), loader(data))
    assert (probe.on_train_batch_end.calls, probe.on_validation_batch_end.calls) == (6, 6)
    assert "eval/linear_sync_free_accuracy" in fit.callback_metrics


def test_the_docstring_lists_exactly_what_a_csv_logger_receives(
    backbone, trainer, loader, data, tmp_path
):
    section = OnlineProbe.__doc__.split("What loggers receive:")[1].split("Train, validation")[0]
    documented = {
        name.replace("{name}", "linear").replace("{metric}", "accuracy")
        for name in re.findall(r"``((?:train|eval)/[^`]+)``", section)
    }
    logger = CSVLogger(tmp_path, name="probe", version=0)
    fit = trainer(
        callbacks=[linear_probe(metrics=[accuracy()], clean_loader=loader(data))], max_epochs=2,
        logger=logger, log_every_n_steps=2,
    )  # fmt: skip
    fit.fit(backbone(), loader(data), loader(data))
    with open(tmp_path / "probe" / "version_0" / "metrics.csv") as rows:
        received = set(next(csv.reader(rows))) - {"epoch", "step"}
    assert documented == received == {
        "train/linear_loss", "train/linear_loss_step", "train/linear_accuracy",
        "eval/linear_accuracy", "eval/linear_clean_accuracy",
    }  # fmt: skip


# ----------------------------------------------------------------------------- structure


@pytest.mark.parametrize("what", ["start", "epoch_start", "batch_end", "epoch_end", "end"])
def test_validation_and_test_run_one_implementation(what):
    # Lightning's validation and test hooks stay SPTCallback's, which route both stages to
    # the probe's single _eval_* method: no copy-pasted pair of hooks.
    for stage in ("validation", "test"):
        hook = f"on_{stage}_{what}"
        assert getattr(OnlineProbe, hook) is getattr(SPTCallback, hook), hook


def test_no_module_of_the_package_exceeds_300_lines():
    source = Path(spt_probe.__file__).parent
    sizes = {path.name: len(path.read_text().splitlines()) for path in source.glob("*.py")}
    assert "functional.py" in sizes
    assert {name: size for name, size in sizes.items() if size > 300} == {}
