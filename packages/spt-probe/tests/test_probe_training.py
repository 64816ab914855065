"""What OnlineProbe's training does, checked against references computed outside Lightning."""

import copy
import functools

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.optim.lr_scheduler import ConstantLR, StepLR
from torchmetrics.classification import MulticlassAccuracy

from spt_core import callbacks_metrics, callbacks_modules
from spt_core.testing import Backbone, DictDataset, RecordingLogger, ResumableLoader
from spt_probe import OnlineProbe, probe_step


class FeatureRecorder(L.Callback):
    """Keeps the (embedding, label) pairs the probe trains on, in order."""

    def __init__(self):
        self.batches = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches.append((outputs["embedding"].detach().clone(), batch["label"].clone()))


def probe_on(**kwargs) -> OnlineProbe:
    settings = {"name": "linear", "input": "embedding", "target": "label"}
    settings.update(kwargs)
    return OnlineProbe(**settings)


def sgd_reference(start: nn.Module, windows, lr: float, clip=None) -> nn.Module:
    """Plain SGD over windows of (features, labels) batches, each loss scaled by 1/len(window)."""
    probe = copy.deepcopy(start)
    optimizer = torch.optim.SGD(probe.parameters(), lr=lr)
    for window in windows:
        for x, y in window:
            (F.cross_entropy(probe(x.float()), y) / len(window)).backward()
        if clip is not None:
            clip(list(probe.parameters()))
        optimizer.step()
        optimizer.zero_grad()
    return probe


def split(batches, sizes):
    out, start = [], 0
    for size in sizes:
        out.append(batches[start : start + size])
        start += size
    return out


def run(backbone, trainer, loader, data, probe, epochs=1, batch_size=8, **trainer_kwargs):
    recorder = FeatureRecorder()
    model = backbone(**trainer_kwargs.pop("model", {}))
    fit = trainer(callbacks=[recorder, probe], max_epochs=epochs, **trainer_kwargs)
    fit.fit(model, loader(data, batch_size))
    return model, recorder.batches, fit


# ----------------------------------------------------------------------------- backbone


@pytest.mark.parametrize("manual", [False, True])
def test_backbone_weights_are_bitwise_identical_with_and_without_probes(
    backbone, trainer, loader, data, manual
):
    def train(with_probes: bool) -> dict:
        callbacks = []  # built before seeding: constructing nn.Linear draws from the RNG
        if with_probes:
            callbacks = [
                probe_on(name="linear", probe=nn.Linear(5, 3)),
                probe_on(  # built at setup from a callable; dropout uses the RNG in training
                    name="mlp",
                    probe=lambda: nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.5), nn.Linear(8, 3)),
                    optimizer="AdamW",
                    accumulate_grad_batches=2,
                ),
            ]
        L.seed_everything(7, verbose=False)
        model = backbone(dropout=0.3, manual=manual)
        fit = trainer(callbacks=callbacks, max_epochs=2)
        fit.fit(model, loader(data, shuffle=True), loader(data))
        return {k: v.clone() for k, v in model.state_dict().items()}

    without, with_probes = train(False), train(True)
    assert without.keys() == with_probes.keys()
    for key in without:
        assert torch.equal(without[key], with_probes[key]), key


def test_undetached_features_do_not_leak_gradient_into_the_backbone(
    backbone, trainer, loader, data
):
    probe = probe_on(probe=nn.Linear(5, 3), optimizer={"type": "SGD", "lr": 0.1})
    model = backbone(detach=False)
    grads = []

    class GradSpy(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            grads.append([p.grad.clone() for p in pl_module.parameters()])

    fit = trainer(callbacks=[GradSpy(), probe, GradSpy()], max_steps=3)
    fit.fit(model, loader(data))
    for before, after in zip(grads[0::2], grads[1::2], strict=True):
        assert all(torch.equal(b, a) for b, a in zip(before, after, strict=True))


# ----------------------------------------------------------------------------- accuracy


def test_linear_probe_on_digits_is_within_two_points_of_logistic_regression(trainer, loader):
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0)
    scaler = StandardScaler().fit(x_train)
    x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)
    with threadpool_limits(1):
        offline = LogisticRegression(max_iter=2000).fit(x_train, y_train)
    reference = offline.score(x_test, y_test)

    train = DictDataset(x=torch.tensor(x_train, dtype=torch.float32), label=torch.tensor(y_train))
    test = DictDataset(x=torch.tensor(x_test, dtype=torch.float32), label=torch.tensor(y_test))
    torch.manual_seed(0)
    probe = probe_on(
        probe=nn.Linear(64, 10),
        metrics=MulticlassAccuracy(10, average="micro", validate_args=False),
    )
    # The default optimizer (LARS without momentum, lr 0.1) is plain-SGD slow: 30 epochs.
    fit = trainer(callbacks=[probe], max_epochs=30, check_val_every_n_epoch=30)
    # Backbone(): the embedding is the standardised pixels themselves.
    fit.fit(Backbone(), loader(train, 64, shuffle=True), loader(test, 540))
    online = fit.callback_metrics["eval/linear_accuracy"].item()
    assert online >= reference - 0.02, (online, reference)


# ----------------------------------------------------------------------------- thin callback


def test_the_callback_trains_exactly_like_a_hand_loop_over_probe_step(
    backbone, trainer, loader, make_data
):
    """The batch hook is lookup -> probe_step -> step: on batches with unlabelled rows and
    NaN features its probe is bit for bit the one a plain loop over the public
    ``probe_step`` trains."""

    class Poisoned(backbone):
        def training_step(self, batch, batch_idx):
            out = super().training_step(batch, batch_idx)
            bad = (batch["index"] % 7 == 3)[:, None]
            out["embedding"] = torch.where(bad, float("nan"), out["embedding"])
            return out

    data = make_data(n=48)
    data.columns["label"] = torch.where(torch.arange(48) % 5 == 1, -1, data.columns["label"])
    torch.manual_seed(0)
    start = nn.Linear(5, 3)
    probe = probe_on(probe=copy.deepcopy(start), optimizer={"type": "SGD", "lr": 0.5})
    recorder = FeatureRecorder()
    trainer(callbacks=[recorder, probe]).fit(Poisoned(), loader(data))

    by_hand = copy.deepcopy(start)
    optimizer = torch.optim.SGD(by_hand.parameters(), lr=0.5)
    for features, labels in recorder.batches:
        probe_step(by_hand, features, labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert any(not torch.isfinite(x).all() for x, _ in recorder.batches)
    for key, value in by_hand.state_dict().items():
        assert torch.equal(probe.module.state_dict()[key], value), key


# ----------------------------------------------------------------------------- accumulation


@pytest.mark.parametrize(("n", "size", "windows"), [(56, 3, [3, 3, 1]), (48, 2, [2, 2, 2])])
def test_accumulation_scales_each_window_by_its_real_size(
    backbone, trainer, loader, make_data, n, size, windows
):
    torch.manual_seed(0)
    start = nn.Linear(5, 3)
    probe = probe_on(
        probe=copy.deepcopy(start),
        optimizer={"type": "SGD", "lr": 0.5},
        accumulate_grad_batches=size,
    )
    _, batches, _ = run(backbone, trainer, loader, make_data(n=n), probe)
    assert probe.optimizer_steps == len(windows)
    assert all(p.grad is None for p in probe.module.parameters())  # nothing left over
    expected = sgd_reference(start, split(batches, windows), lr=0.5)
    torch.testing.assert_close(probe.module.state_dict(), expected.state_dict())
    if windows[-1] != size:  # the naive 1/size scaling of the last window is detectably wrong
        naive = sgd_reference(start, split(batches, windows[:-1]), lr=0.5)
        x, y = batches[-1]
        (F.cross_entropy(naive(x), y) / size).backward()
        torch.optim.SGD(naive.parameters(), lr=0.5).step()
        assert not torch.allclose(probe.module.weight, naive.weight)


# ----------------------------------------------------------------------------- clipping


@pytest.mark.parametrize(
    ("algorithm", "clip"),
    [
        ("norm", functools.partial(nn.utils.clip_grad_norm_, max_norm=0.05)),
        ("value", functools.partial(nn.utils.clip_grad_value_, clip_value=0.01)),
    ],
)
def test_clipping_matches_torch_clipping(backbone, trainer, loader, data, algorithm, clip):
    torch.manual_seed(0)
    start = nn.Linear(5, 3)
    value = 0.05 if algorithm == "norm" else 0.01
    probe = probe_on(
        probe=copy.deepcopy(start),
        optimizer={"type": "SGD", "lr": 1.0},
        gradient_clip_val=value,
        gradient_clip_algorithm=algorithm,
    )
    _, batches, _ = run(backbone, trainer, loader, data, probe)
    expected = sgd_reference(start, [[b] for b in batches], lr=1.0, clip=clip)
    torch.testing.assert_close(probe.module.state_dict(), expected.state_dict())
    unclipped = sgd_reference(start, [[b] for b in batches], lr=1.0)
    assert not torch.allclose(probe.module.weight, unclipped.weight)


# ----------------------------------------------------------------------------- optimizer forms


def _trained_weight(backbone, trainer, loader, data, optimizer, probe_module=None):
    torch.manual_seed(0)
    module = probe_module if probe_module is not None else nn.Linear(5, 3)
    if callable(optimizer) and getattr(optimizer, "__name__", "") == "build_instance":
        optimizer = optimizer(module)
    probe = probe_on(probe=module, optimizer=optimizer)
    run(backbone, trainer, loader, data, probe)
    return probe.module.weight.detach().clone(), probe.optimizer


def build_instance(module):
    return torch.optim.SGD(module.parameters(), lr=0.3, momentum=0.5)


@pytest.mark.parametrize(
    "form",
    [
        {"type": "SGD", "lr": 0.3, "momentum": 0.5},
        {"type": torch.optim.SGD, "lr": 0.3, "momentum": 0.5},
        functools.partial(torch.optim.SGD, lr=0.3, momentum=0.5),
        lambda params: torch.optim.SGD(params, lr=0.3, momentum=0.5),
        build_instance,
    ],
    ids=["dict-name", "dict-class", "partial", "callable", "instance"],
)
def test_every_optimizer_form_trains_identically(backbone, trainer, loader, data, form):
    reference, _ = _trained_weight(
        backbone, trainer, loader, data, {"type": "SGD", "lr": 0.3, "momentum": 0.5}
    )
    weight, optimizer = _trained_weight(backbone, trainer, loader, data, form)
    assert type(optimizer) is torch.optim.SGD
    assert torch.equal(weight, reference)


@pytest.mark.parametrize("form", ["SGD", "sgd", torch.optim.SGD])
def test_name_and_class_use_the_optimizer_defaults(backbone, trainer, loader, data, form):
    reference, _ = _trained_weight(backbone, trainer, loader, data, {"type": "SGD"})
    weight, optimizer = _trained_weight(backbone, trainer, loader, data, form)
    assert optimizer.defaults["lr"] == torch.optim.SGD([torch.zeros(1)]).defaults["lr"]
    assert torch.equal(weight, reference)


@pytest.mark.parametrize("name", ["AdamW", "LARS", "RMSprop"])
def test_named_optimizers_train(backbone, trainer, loader, data, name):
    torch.manual_seed(0)
    start = nn.Linear(5, 3)
    weight, optimizer = _trained_weight(backbone, trainer, loader, data, name, copy.deepcopy(start))
    assert type(optimizer).__name__ == name
    assert not torch.equal(weight, start.weight)


def test_optimizer_instance_over_other_parameters_is_refused(backbone, trainer, loader, data):
    stray = torch.optim.SGD(nn.Linear(5, 3).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="exactly the module's trainable parameters"):
        run(backbone, trainer, loader, data, probe_on(probe=nn.Linear(5, 3), optimizer=stray))


# ----------------------------------------------------------------------------- scheduler forms

LR = 0.8


def _lrs(backbone, trainer, loader, data, scheduler, epochs=2, module=None, optimizer=None):
    torch.manual_seed(0)
    module = module if module is not None else nn.Linear(5, 3)
    probe = probe_on(
        probe=module,
        optimizer=optimizer if optimizer is not None else {"type": "SGD", "lr": LR},
        scheduler=scheduler,
    )
    lrs = []

    class Spy(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            lrs.append(probe.optimizer.param_groups[0]["lr"])

    run_model = backbone()
    trainer(callbacks=[probe, Spy()], max_epochs=epochs).fit(run_model, loader(data))
    return lrs, probe


STEPS = 6  # 48 rows / batch 8


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        (None, [LR, LR]),
        ("ConstantLR", [LR, LR]),  # torch's defaults: factor 1/3 for the first 5 steps
        (ConstantLR, [LR, LR]),
        ({"type": "StepLR", "step_size": 4, "gamma": 0.5}, [LR / 2, LR / 8]),
        ({"type": StepLR, "step_size": 1, "gamma": 0.5, "interval": "epoch"}, [LR / 2, LR / 4]),
        (functools.partial(StepLR, step_size=3, gamma=0.5), [LR / 4, LR / 16]),
        (lambda opt: StepLR(opt, step_size=6, gamma=0.1), [LR * 0.1, LR * 0.01]),
        (
            {"scheduler": functools.partial(StepLR, step_size=1, gamma=0.5), "interval": "epoch"},
            [LR / 2, LR / 4],
        ),
    ],
    ids=[
        "default",
        "name",
        "class",
        "dict",
        "dict-class-epoch",
        "partial",
        "callable",
        "wrapped-epoch",
    ],
)
def test_every_scheduler_form_and_interval(backbone, trainer, loader, data, form, expected):
    lrs, _ = _lrs(backbone, trainer, loader, data, form)
    assert lrs == pytest.approx(expected)


def test_constant_lr_name_uses_torch_defaults_during_its_first_steps(
    backbone, trainer, loader, data
):
    _, probe = _lrs(backbone, trainer, loader, data, "ConstantLR", epochs=1)
    assert type(probe.scheduler) is ConstantLR and probe.scheduler.factor == pytest.approx(1 / 3)
    assert probe.scheduler.last_epoch == STEPS


def test_scheduler_instance_on_an_optimizer_instance(backbone, trainer, loader, data):
    module = nn.Linear(5, 3)
    optimizer = torch.optim.SGD(module.parameters(), lr=LR)
    scheduler = StepLR(optimizer, step_size=2, gamma=0.5)
    lrs, probe = _lrs(
        backbone, trainer, loader, data, scheduler, module=module, optimizer=optimizer
    )
    assert probe.scheduler is scheduler
    assert lrs == pytest.approx([LR / 8, LR / 64])


def test_cosine_by_name_spans_the_whole_run(backbone, trainer, loader, data):
    lrs, probe = _lrs(backbone, trainer, loader, data, "CosineAnnealingLR", epochs=3)
    assert probe.scheduler.T_max == 3 * STEPS
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert lrs[0] == pytest.approx(LR * (1 + torch.cos(torch.tensor(torch.pi / 3)).item()) / 2)


def test_one_cycle_by_name_fills_total_steps_and_max_lr(backbone, trainer, loader, data):
    _, probe = _lrs(backbone, trainer, loader, data, {"type": "OneCycleLR"}, epochs=2)
    assert probe.scheduler.total_steps == 2 * STEPS
    assert probe.scheduler.last_epoch == 2 * STEPS


def _untrainable(logits, target):
    return logits.sum() * 0.0  # weights never move


def _constant_probe() -> nn.Module:
    """Zero weights that never move: constant logits, so the accuracy never improves."""
    probe = nn.Linear(5, 3)
    nn.init.zeros_(probe.weight)
    nn.init.zeros_(probe.bias)
    return probe


@pytest.mark.parametrize("monitor", ["eval/linear_accuracy", "train/linear_accuracy"])
def test_reduce_on_plateau_follows_the_monitored_value(backbone, trainer, loader, data, monitor):
    probe = probe_on(
        probe=_constant_probe(),
        loss_fn=_untrainable,
        optimizer={"type": "SGD", "lr": LR},
        scheduler={
            "type": "ReduceLROnPlateau",
            "monitor": monitor,
            "mode": "max",
            "patience": 0,
            "factor": 0.5,
        },
        metrics=MulticlassAccuracy(3, validate_args=False),
    )
    lrs = []

    class Spy(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            lrs.append(probe.optimizer.param_groups[0]["lr"])

    fit = trainer(callbacks=[probe, Spy()], max_epochs=4)
    fit.fit(backbone(), loader(data), loader(data))
    assert probe.scheduler_config.interval == "epoch"
    assert lrs == pytest.approx([LR, LR, LR / 2, LR / 4])


def test_missing_monitored_value_fails_unless_not_strict(backbone, trainer, loader, data):
    def plateau(strict):
        return probe_on(
            probe=nn.Linear(5, 3),
            optimizer={"type": "SGD", "lr": LR},
            scheduler={"type": "ReduceLROnPlateau", "monitor": "eval/nothing", "strict": strict},
        )

    with pytest.raises(KeyError, match="eval/nothing"):
        trainer(callbacks=[plateau(True)]).fit(backbone(), loader(data))
    lenient = plateau(False)
    trainer(callbacks=[lenient], max_epochs=2).fit(backbone(), loader(data))
    assert lenient.optimizer.param_groups[0]["lr"] == LR


# ----------------------------------------------------------------------------- precision


def test_bf16_features_train_an_fp32_probe_outside_autocast(backbone, trainer, loader, data):
    torch.manual_seed(0)
    start = nn.Linear(5, 3)
    probe = probe_on(probe=copy.deepcopy(start), optimizer={"type": "SGD", "lr": 0.5})
    _, batches, _ = run(
        backbone, trainer, loader, data, probe,
        precision="bf16-mixed", model={"feature_dtype": torch.bfloat16},
    )  # fmt: skip
    assert all(x.dtype == torch.bfloat16 for x, _ in batches)
    assert all(p.dtype == torch.float32 for p in probe.module.parameters())
    expected = sgd_reference(start, [[b] for b in batches], lr=0.5)  # fp32 math, no autocast
    for key, value in expected.state_dict().items():
        assert torch.equal(probe.module.state_dict()[key], value), key


# ----------------------------------------------------------------------------- resume


def test_resume_continues_exactly(backbone, trainer, loader, data, tmp_path):
    def fresh():
        torch.manual_seed(0)
        linear = probe_on(
            probe=nn.Linear(5, 3),
            accumulate_grad_batches=4,
            scheduler={"type": "StepLR", "step_size": 2, "gamma": 0.7},
        )
        dropout_mlp = probe_on(
            name="mlp",
            probe=nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.5), nn.Linear(8, 3)),
            optimizer="AdamW",
        )
        return backbone(), [linear, dropout_mlp]

    model, straight = fresh()
    trainer(callbacks=straight, max_epochs=2).fit(model, loader(data))

    model, first = fresh()
    fit = trainer(callbacks=first, max_epochs=1)
    fit.fit(model, loader(data))
    fit.save_checkpoint(tmp_path / "one.ckpt")
    torch.manual_seed(123)  # the global stream differs after a restart; the probes' own do not

    model, resumed = fresh()
    trainer(callbacks=resumed, max_epochs=2).fit(
        model, loader(data), ckpt_path=tmp_path / "one.ckpt"
    )
    assert [p.optimizer_steps for p in resumed] == [p.optimizer_steps for p in straight] == [4, 12]
    for a_probe, b_probe in zip(straight, resumed, strict=True):
        for key, value in a_probe.module.state_dict().items():
            assert torch.equal(b_probe.module.state_dict()[key], value), key
        a, b = a_probe.optimizer.state_dict(), b_probe.optimizer.state_dict()
        assert a["param_groups"] == b["param_groups"]
        for slot, values in a["state"].items():
            for name, value in values.items():
                assert torch.equal(value, b["state"][slot][name]), name
        assert a_probe.scheduler.state_dict() == b_probe.scheduler.state_dict()
    assert callbacks_modules(model)["linear"] is resumed[0].module


class TrainCopiesExposed(L.Callback):
    """Whether the probe's training metric copies are at ``callbacks_metrics`` on each batch."""

    def __init__(self):
        self.seen = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append("train/0" in callbacks_metrics(pl_module).get("linear", {}))


@pytest.mark.parametrize(
    ("every", "nan_before_checkpoint"), [(3, False), (3, True), (6, False)], ids=str
)
def test_a_resume_within_an_epoch_logs_the_uninterrupted_epochs_train_values(
    backbone, trainer, loader, data, tmp_path, every, nan_before_checkpoint
):
    """Epoch 1 resumes from a checkpoint written after its 3rd of 6 batches (``every=3``), or
    after epoch 0's last batch, whose ``on_train_epoch_end`` Lightning then skips (``every=6``:
    the probe replays its scheduler step and drops the epoch's loss and metrics). Both log
    epoch 1's train values over its 6 batches, as the uninterrupted fit does. A non-finite row
    in batch 1 of epoch 1 (before the checkpoint) keeps both from logging the accuracy."""
    if nan_before_checkpoint:
        data.columns["x"][9, 0] = float("nan")  # row 9: batch 1 of every epoch

    def fit(resume=None):
        torch.manual_seed(0)
        probe = probe_on(
            probe=nn.Linear(6, 3), metrics=MulticlassAccuracy(num_classes=3),
            scheduler={"type": "StepLR", "step_size": 1, "gamma": 0.5, "interval": "epoch"},
        )  # fmt: skip
        saver = ModelCheckpoint(
            dirpath=tmp_path, filename="{step}", every_n_train_steps=every, save_top_k=-1
        )
        logger, exposed = RecordingLogger(), TrainCopiesExposed()
        run = trainer(
            callbacks=[probe, exposed, saver], max_epochs=2, logger=logger,
            enable_checkpointing=True,
        )  # fmt: skip
        features = backbone(width=None)  # the rows themselves
        run.fit(features, ResumableLoader(data, batch_size=8), ckpt_path=resume)
        assert exposed.seen and all(exposed.seen)
        return logger.records[-1][1], probe.module.state_dict()  # epoch 1's values at its end

    straight, weights = fit()
    resumed, resumed_weights = fit(tmp_path / {3: "step=9.ckpt", 6: "step=6.ckpt"}[every])
    assert ("train/linear_accuracy" in straight) is not nan_before_checkpoint
    assert resumed["train/linear_loss"] == straight["train/linear_loss"]
    assert resumed.get("train/linear_accuracy") == straight.get("train/linear_accuracy")
    for key, value in weights.items():
        assert torch.equal(resumed_weights[key], value), key


def test_a_mid_epoch_loss_from_a_0_2_checkpoint_counts_every_row_as_labelled():
    probe = probe_on(probe=nn.Linear(5, 3))
    probe.load_state_dict({"loss_total": torch.tensor([6.0, 3.0])})  # (loss * rows, rows)
    assert probe.state_dict()["loss_total"].tolist() == [6.0, 3.0, 3.0]


# ----------------------------------------------------------------------------- devices


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_probe_follows_the_model_to_cuda_under_bf16(backbone, trainer, loader, data):
    probe = probe_on(
        probe=nn.Linear(5, 3),
        optimizer={"type": "LARS", "momentum": 0.9},  # a state to follow the probe
        accumulate_grad_batches=2,
        metrics=MulticlassAccuracy(3, validate_args=False),
    )
    model = backbone(feature_dtype=torch.bfloat16)
    fit = trainer(callbacks=[probe], accelerator="gpu", precision="bf16-mixed", max_epochs=2)
    fit.fit(model, loader(data), loader(data))
    assert all(p.device.type == "cuda" for p in probe.module.parameters())
    assert all(p.dtype == torch.float32 for p in probe.module.parameters())
    state = next(iter(probe.optimizer.state.values()))["momentum_buffer"]
    assert state.device.type == "cuda"
    assert callbacks_modules(model)["linear"] is probe.module
    assert torch.isfinite(fit.callback_metrics["train/linear_loss"])
    assert "eval/linear_accuracy" in fit.callback_metrics


def test_a_resume_at_an_epochs_last_batch_keeps_the_clean_evaluation_schedule(
    backbone, trainer, loader, data, tmp_path
):
    """Epoch 0's validation (a clean evaluation, due every 2 epochs) follows the batch the
    checkpoint was written at, and Lightning skips it on resume: the resumed probe marks it
    and evaluates at epoch 2, as the uninterrupted fit does, not at epoch 1."""

    def fit(resume=None):
        torch.manual_seed(0)
        probe = probe_on(
            probe=nn.Linear(5, 3), metrics=MulticlassAccuracy(num_classes=3),
            clean_loader=loader(data), clean_every_n_epochs=2, clean_epochs=1,
        )  # fmt: skip
        saver = ModelCheckpoint(tmp_path, "{step}", every_n_train_steps=6, save_top_k=-1)
        logger = RecordingLogger()
        run = trainer(callbacks=[probe, saver], max_epochs=3, logger=logger,
                      enable_checkpointing=True)  # fmt: skip
        run.fit(backbone(), ResumableLoader(data, batch_size=8), loader(data), ckpt_path=resume)
        return [m["epoch"] for _, m in logger.records if "eval/linear_clean_accuracy" in m]

    assert fit() == [0, 2]
    assert fit(tmp_path / "step=6.ckpt") == [2]  # 6 batches per epoch: epoch 0's last
