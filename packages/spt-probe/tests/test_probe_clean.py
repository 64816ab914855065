"""OnlineProbe's clean evaluation (``clean_loader``): a fresh probe trained on clean features,
against an offline computation; schedule, resume, modes, no effect on backbone or online probe."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

import spt_probe._clean as clean_module
from spt_core.testing import CallbackTester, RecordingLogger, SyncFreeAccuracy, captured_logs
from spt_probe import OnlineProbe, fit_probe, fresh_probe
from spt_probe.linear_eval import not_reset

CLEAN = {"clean_epochs": 3, "clean_batch_size": 8, "clean_seed": 5}


def hand_trained(features, labels, make_probe, *, seed, epochs, batch_size, lr=1e-3):
    """The documented clean training, written out: init from ``seed``, AdamW, one generator."""
    torch.manual_seed(seed)
    probe = make_probe()
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for rows in torch.randperm(len(features), generator=order).split(batch_size):
            loss = F.cross_entropy(probe(features[rows]), labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return probe


def accuracy_of(probe, features, labels) -> float:
    with torch.no_grad():
        return (probe(features).argmax(1) == labels).float().mean().item()


def make_probe(name="linear", width=5, **options) -> OnlineProbe:
    settings = {
        "input": "embedding", "target": "label", "probe": nn.Linear(width, 3),
        "optimizer": {"type": "SGD", "lr": 0.05},
        "metrics": {"accuracy": MulticlassAccuracy(3, average="micro", validate_args=False)},
    }  # fmt: skip
    return OnlineProbe(name=name, **{**settings, **options})


# ----------------------------------------------------------------------------- functional


def test_fresh_probe_is_a_seeded_rebuild_that_leaves_probe_and_rng_alone():
    online = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        online[0].weight.add_(1.0)
    before = {k: v.clone() for k, v in online.state_dict().items()}
    rng = torch.get_rng_state()
    fresh = fresh_probe(online, seed=7)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, before[k]) for k, v in online.state_dict().items())
    torch.manual_seed(7)
    expected = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
    for key, value in expected.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    assert fresh.training and fresh[0].weight is not online[0].weight


def test_not_reset_names_parameters_without_reset_parameters():
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Sequential(nn.Linear(2, 2))
            self.scale = nn.Parameter(torch.ones(()))

    assert not_reset(Scaled()) == ["scale"] and not_reset(nn.Linear(2, 2)) == []


@settings(max_examples=15, deadline=None)
@given(
    rows=st.integers(1, 30), epochs=st.integers(0, 3), batch_size=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)  # fmt: skip
def test_fit_probe_equals_the_documented_loop(rows, epochs, batch_size, seed):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(rows, 4, generator=generator)
    labels = torch.randint(0, 3, (rows,), generator=generator)
    torch.manual_seed(seed)
    trained = fit_probe(
        nn.Linear(4, 3), features, labels, epochs=epochs, batch_size=batch_size, seed=seed
    )
    expected = hand_trained(
        features, labels, lambda: nn.Linear(4, 3), seed=seed, epochs=epochs,
        batch_size=batch_size,
    )  # fmt: skip
    for key, value in expected.state_dict().items():
        torch.testing.assert_close(trained.state_dict()[key], value, rtol=1e-5, atol=1e-6)


def test_fit_probe_rejects_a_bad_budget():
    with pytest.raises(ValueError, match="epochs"):
        fit_probe(nn.Linear(2, 2), torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), epochs=-1)
    with pytest.raises(ValueError, match="batch_size"):
        fit_probe(
            nn.Linear(2, 2), torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), batch_size=0
        )


# ----------------------------------------------------------------------------- in a Trainer


def run(backbone, trainer, loader, data, probe, *, epochs=2, model=None, **kwargs):
    logger = RecordingLogger()
    torch.manual_seed(0)
    model = model if model is not None else backbone(dropout=0.5)
    fit = trainer(callbacks=[probe], logger=logger, max_epochs=epochs, **kwargs)
    fit.fit(model, loader(data), loader(data))
    return model, logger


def test_logged_clean_accuracy_equals_an_offline_linear_evaluation(
    backbone, trainer, loader, make_data
):
    clean, val = make_data(40, seed=1), make_data(48, seed=0)
    probe = make_probe(clean_loader=loader(clean, batch_size=16), **CLEAN)
    logger = RecordingLogger()
    torch.manual_seed(0)
    model = backbone(dropout=0.5)
    trainer(callbacks=[probe], logger=logger, max_epochs=2).fit(model, loader(val), loader(val))
    model.eval()
    with torch.no_grad():
        clean_x, val_x = model.encoder(clean.columns["x"]), model.encoder(val.columns["x"])
    offline = hand_trained(
        clean_x, clean.columns["label"], lambda: nn.Linear(5, 3), seed=5, epochs=3, batch_size=8
    )
    for key, value in offline.state_dict().items():
        torch.testing.assert_close(probe._clean.probe.state_dict()[key], value)
    logged = logger.values("eval/linear_clean_accuracy")
    assert len(logged) == 2 == len(logger.values("eval/linear_accuracy"))
    assert logged[-1] == pytest.approx(accuracy_of(offline, val_x, val.columns["label"]), abs=1e-6)


def test_the_backbone_and_the_online_probe_are_unaffected(backbone, trainer, loader, data):
    torch.manual_seed(1)
    with_clean = make_probe(clean_loader=loader(data), **CLEAN)
    model, logged = run(backbone, trainer, loader, data, with_clean)
    torch.manual_seed(1)
    model_plain, plain = run(backbone, trainer, loader, data, make_probe())
    for key, value in model_plain.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    for key, value in plain.logged().items():
        assert logged.values(key) == value, key
    assert set(logged.names()) - set(plain.names()) == {"eval/linear_clean_accuracy"}


class Watch(L.Callback):
    """Records the backbone's modes, requires_grad and grads at validation epoch start
    (callbacks run in list order); ``mix`` first puts the dropout in train mode and gives the
    spare weight a gradient."""

    def __init__(self, mix: bool = False) -> None:
        self.seen: list[tuple[dict, dict, dict]] = []
        self.mix = mix

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if self.mix:
            pl_module.dropout.train()
            pl_module.weight.grad = torch.full_like(pl_module.weight, 3.0)
        self.seen.append(
            (
                {name: m.training for name, m in pl_module.named_modules()},
                {name: p.requires_grad for name, p in pl_module.named_parameters()},
                {name: p.grad for name, p in pl_module.named_parameters()},
            )
        )


def test_modes_requires_grad_and_grads_of_the_backbone_are_restored(
    backbone, trainer, loader, data
):
    torch.manual_seed(0)
    model = backbone(dropout=0.5)
    model.decoder.requires_grad_(False)
    probe, before, after = make_probe(clean_loader=loader(data), **CLEAN), Watch(True), Watch()
    calls = []
    fit = trainer(callbacks=[before, probe, after])
    original = clean_module.embed_loader

    def spy(pl_module, *args, **kwargs):
        calls.append(pl_module)
        return original(pl_module, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(clean_module, "embed_loader", spy)
        fit.validate(model, loader(data), verbose=False)
    assert calls == [model] and len(before.seen) == len(after.seen) == 1
    (modes, flags, grads), (modes_after, flags_after, grads_after) = before.seen[0], after.seen[0]
    assert modes == modes_after and flags == flags_after
    assert modes["dropout"] is True and modes["encoder"] is False  # mixed modes, kept
    assert flags["decoder.weight"] is False and flags["encoder.weight"] is True
    assert all(grads_after[name] is grad for name, grad in grads.items())
    assert grads["weight"] is not None and grads["encoder.weight"] is None


class Trainings(list):
    """Where each clean training happened: the epoch of ``self.fit`` (the Trainer watched),
    ``"sanity"``, or the stage outside a fit (``"validate"``, ``"test"``)."""

    fit: L.Trainer | None = None


@pytest.fixture
def trainings(monkeypatch) -> Trainings:
    seen = Trainings()
    original = clean_module.fit_probe

    def spy(*args, **kwargs):
        fit = seen.fit
        if fit.sanity_checking:
            seen.append("sanity")
        else:
            seen.append(fit.current_epoch if fit.state.fn == "fit" else fit.state.fn.value)
        return original(*args, **kwargs)

    monkeypatch.setattr(clean_module, "fit_probe", spy)
    return seen


def test_clean_values_come_only_from_a_probe_trained_at_that_evaluation(
    backbone, trainer, loader, data, trainings
):
    """Trained at epochs 0, 2, 4 (not the sanity check), logged at those epochs only; validate
    and test after the fit train again on the current features (no stale probe)."""
    probe = make_probe(clean_loader=loader(data), clean_every_n_epochs=2, **CLEAN)
    logger = RecordingLogger()
    fit = trainer(callbacks=[probe], logger=logger, max_epochs=5, num_sanity_val_steps=2)
    trainings.fit = fit
    torch.manual_seed(0)
    model = backbone()
    fit.fit(model, loader(data), loader(data))
    assert trainings == [0, 2, 4] and probe.state_dict()["clean"]["schedule"]["last_epoch"] == 4
    epochs = [m["epoch"] for _, m in logger.records if "eval/linear_clean_accuracy" in m]
    assert epochs == [0, 2, 4]
    assert len(logger.values("eval/linear_accuracy")) == 5
    fit.validate(model, loader(data), verbose=False)
    fit.test(model, loader(data), verbose=False)
    assert trainings == [0, 2, 4, "validate", "test"]
    assert len(logger.values("eval/linear_clean_accuracy")) == 5
    model.eval()
    with torch.no_grad():
        features = model.encoder(data.columns["x"])
    offline = hand_trained(
        features, data.columns["label"], lambda: nn.Linear(5, 3), seed=5, epochs=3, batch_size=8
    )
    expected = accuracy_of(offline, features, data.columns["label"])
    assert logger.values("eval/linear_clean_accuracy")[-1] == pytest.approx(expected, abs=1e-6)
    fresh = make_probe(name="fresh", clean_loader=loader(data), **CLEAN)
    other = trainer(callbacks=[fresh])
    trainings.fit = other
    other.validate(model, loader(data), verbose=False)
    assert trainings[-1] == "validate" and fresh._clean.probe is not None


def test_a_probe_reused_in_a_second_fit_starts_its_schedule_over(
    backbone, trainer, loader, data, trainings
):
    probe = make_probe(clean_loader=loader(data), clean_every_n_epochs=3, **CLEAN)
    for _ in range(2):
        logger = RecordingLogger()
        fit = trainer(callbacks=[probe], logger=logger, max_epochs=2)
        trainings.fit = fit
        torch.manual_seed(0)
        fit.fit(backbone(), loader(data), loader(data))
        assert len(logger.values("eval/linear_clean_accuracy")) == 1
    assert trainings == [0, 0]


def test_resume_trains_at_the_epochs_of_the_uninterrupted_run(
    backbone, trainer, loader, data, tmp_path, trainings
):
    def fit(epochs, ckpt=None, save=None):
        torch.manual_seed(0)
        probe = make_probe(clean_loader=loader(data), clean_every_n_epochs=3, **CLEAN)
        logger = RecordingLogger()
        model = backbone()
        run = trainer(callbacks=[probe], logger=logger, max_epochs=epochs)
        trainings.fit = run
        run.fit(model, loader(data), loader(data), ckpt_path=ckpt)
        if save:
            run.save_checkpoint(save)
        return probe, logger.values("eval/linear_clean_accuracy")

    straight, straight_logged = fit(5)
    fit(2, save=tmp_path / "two.ckpt")
    resumed, resumed_logged = fit(5, ckpt=tmp_path / "two.ckpt")
    assert trainings == [0, 3, 0, 3]  # the resumed run starts at epoch 2: no training there
    assert len(straight_logged) == 2 and resumed_logged == straight_logged[1:]
    for key, value in straight._clean.probe.state_dict().items():
        assert torch.equal(resumed._clean.probe.state_dict()[key], value), key
    saved = torch.load(tmp_path / "two.ckpt", weights_only=False)["callbacks"]
    assert saved["OnlineProbe[name=linear]"]["clean"] == {"schedule": {"last_epoch": 0}}


def test_no_host_sync_per_validation_batch(backbone, trainer, loader, data, no_host_sync):
    metrics = {"accuracy": SyncFreeAccuracy()}
    probe = make_probe(clean_loader=loader(data), metrics=metrics, **CLEAN)
    probe.on_validation_batch_end = no_host_sync(probe.on_validation_batch_end)
    run(backbone, trainer, loader, data, probe)
    assert probe.on_validation_batch_end.calls == 2 * 6
    assert probe._clean.probe is not None


def test_bad_options_and_clean_labels_name_the_probe(backbone, trainer, loader, data, make_data):
    with pytest.raises(ValueError, match=r"OnlineProbe\[name=linear\].*needs metrics"):
        make_probe(metrics=None, clean_loader=loader(data))
    with pytest.raises(ValueError, match=r"OnlineProbe\[name=linear\]: clean_epochs.*0"):
        make_probe(clean_loader=loader(data), clean_epochs=0)
    with pytest.raises(TypeError, match=r"OnlineProbe\[name=linear\]: clean_every_n_epochs.*True"):
        make_probe(clean_loader=loader(data), clean_every_n_epochs=True)
    with pytest.raises(TypeError, match=r"OnlineProbe\[name=linear\]: clean_optimizer.*instance"):
        make_probe(
            clean_loader=loader(data), clean_optimizer=torch.optim.SGD(nn.Linear(1, 1).parameters())
        )
    with pytest.raises(TypeError, match=r"OnlineProbe\[name=linear\]: clean_embed must be call"):
        make_probe(clean_loader=loader(data), clean_embed="encoder")
    with pytest.raises(TypeError, match=r"OnlineProbe\[name=linear\]: clean_loader"):
        make_probe(clean_loader=3)
    wide = make_data(12)
    wide.columns["label"] = torch.arange(12)  # labels up to 11 for 3 outputs
    with pytest.raises(ValueError, match=r"OnlineProbe\[name=linear\].*clean loader.*label 11"):
        run(backbone, trainer, loader, data, make_probe(clean_loader=loader(wide)))


def test_clean_embed_function_replaces_validation_step(backbone, trainer, loader, data):
    def raw(pl_module, batch):
        return batch["x"][:, :5] * 0  # every clean row identical: the probe learns the prior

    probe = make_probe(clean_loader=loader(data), clean_embed=raw, **CLEAN)
    run(backbone, trainer, loader, data, probe, epochs=1)
    offline = hand_trained(
        torch.zeros(48, 5), data.columns["label"], lambda: nn.Linear(5, 3), seed=5, epochs=3,
        batch_size=8,
    )  # fmt: skip
    for key, value in offline.state_dict().items():
        torch.testing.assert_close(probe._clean.probe.state_dict()[key], value)


# ----------------------------------------------------------------------------- two processes


def _seeded_backbone():
    from spt_core.testing import Backbone

    return Backbone(dim=6)  # the features are the inputs: both runs embed the same rows


@pytest.fixture
def clean_tester(make_data) -> CallbackTester:
    blobs = make_data
    clean, val = blobs(32, seed=1), blobs(24, seed=2)
    make = functools.partial(
        OnlineProbe, name="linear", input="embedding", target="label", probe=nn.Linear(6, 3),
        metrics={"accuracy": MulticlassAccuracy(3, average="micro")},
        clean_loader=torch.utils.data.DataLoader(clean, batch_size=16), **CLEAN,
    )  # fmt: skip
    tester = CallbackTester(make, _seeded_backbone, blobs(32, seed=3), val, 4, {"max_epochs": 2})
    tester.clean = clean
    return tester


def _offline_clean_accuracy(tester) -> float:
    clean, val = tester.clean.columns, tester.val.columns
    offline = hand_trained(
        clean["x"], clean["label"], lambda: nn.Linear(6, 3), seed=5, epochs=3, batch_size=8
    )
    return accuracy_of(offline, val["x"], val["label"])


def test_clean_accuracy_single_process_equals_offline(clean_tester):
    expected = {"eval/linear_clean_accuracy": _offline_clean_accuracy(clean_tester)}
    clean_tester.assert_logged(clean_tester.run(), expected, atol=1e-6)


@pytest.mark.ddp
def test_clean_accuracy_two_processes_equals_offline(clean_tester):
    # Two clean batches: rank r embeds batch r, so the gathered rows keep the loader's order.
    expected = {"eval/linear_clean_accuracy": _offline_clean_accuracy(clean_tester)}
    clean_tester.assert_logged(clean_tester.run_ddp(), expected, atol=1e-6)


@pytest.fixture
def lines():
    with captured_logs() as logged:
        yield logged


class Scaled(nn.Module):
    """A linear probe times a learned scale, which has no ``reset_parameters``."""

    def __init__(self) -> None:
        super().__init__()
        self.linear, self.scale = nn.Linear(5, 3), nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.linear(x) * self.scale


def test_non_finite_clean_rows_empty_loaders_and_kept_parameters_warn_once(
    backbone, trainer, loader, data, lines
):
    def with_nan(pl_module, batch):
        features = pl_module.encoder(batch["x"])
        return torch.where(batch["index"][:, None] == 0, float("nan"), features)

    probe = make_probe(clean_loader=loader(data), clean_embed=with_nan, probe=Scaled(), **CLEAN)
    run(backbone, trainer, loader, data, probe, epochs=1)
    assert all(v.isfinite().all() for v in probe._clean.probe.state_dict().values())
    text = "\n".join(lines)
    assert text.count("1 clean rows of 'embedding' had non-finite values") == 1
    assert "OnlineProbe[name=linear]: the clean probe's ['scale'] have no reset_parameters" in text
    empty = make_probe(name="empty", clean_loader=[], **CLEAN)
    _, logged = run(backbone, trainer, loader, data, empty, epochs=2)
    assert "eval/empty_clean_accuracy" not in logged.names() and empty._clean.probe is None
    assert "\n".join(lines).count("the clean loader gave no row") == 2  # once per epoch
