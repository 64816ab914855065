"""TrainableCallback: building, placing, stepping and checkpointing its own module."""

import copy
import sys
import types
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader

from spt_core import SPTCallback, callbacks_modules
from spt_core.testing import Backbone, DictDataset, ResumableLoader, captured_logs, quiet_trainer
from spt_trainable import TrainableCallback


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rows(n: int, seed: int = 0) -> DictDataset:
    """``n`` rows ``{"x", "y"}`` of a noiseless linear regression."""
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed))
    return DictDataset(x=x, y=x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1)


class Regressor(TrainableCallback):
    """Fits its module to ``y`` from ``x``; ``every`` > 1 trains on every n-th batch only
    (like a callback that updates at intervals); it records what it trained on."""

    def __init__(self, name="head", module=None, pass_batch_idx=True, every=1, **kwargs):
        super().__init__(name, module=module if module is not None else nn.Linear(3, 1), **kwargs)
        self.pass_batch_idx, self.every = pass_batch_idx, every
        self.seen = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx % self.every:
            return
        x = self.prepare_input(batch["x"])
        self.seen.append((x.clone(), batch["y"].clone()))
        with self.training_context() as module:
            loss = F.mse_loss(module(x), batch["y"])
        self.backward_and_step(loss, trainer, batch_idx if self.pass_batch_idx else None)


def fit(callbacks, n=56, batch_size=8, epochs=1, model=None, **kwargs):
    model = model if model is not None else Backbone()
    trainer = quiet_trainer(max_epochs=epochs, callbacks=callbacks, **kwargs)
    trainer.fit(model, DataLoader(rows(n), batch_size=batch_size))
    return trainer, model


def sgd_reference(start, windows, lr):
    module = copy.deepcopy(start)
    optimizer = torch.optim.SGD(module.parameters(), lr=lr)
    for window in windows:
        for x, y in window:
            (F.mse_loss(module(x), y) / len(window)).backward()
        optimizer.step()
        optimizer.zero_grad()
    return module


def windows_of(seen, sizes):
    out, start = [], 0
    for size in sizes:
        out.append(seen[start : start + size])
        start += size
    return out


# ----------------------------------------------------------------------------- accumulation


@pytest.mark.parametrize("pass_batch_idx", [True, False])
def test_last_partial_window_is_scaled_by_its_real_size(pass_batch_idx):
    torch.manual_seed(0)
    start = nn.Linear(3, 1)
    head = Regressor(
        module=copy.deepcopy(start),
        optimizer={"type": "SGD", "lr": 0.1},
        accumulate_grad_batches=3,
        pass_batch_idx=pass_batch_idx,
    )
    fit([head], n=56, epochs=2)  # 7 batches per epoch: windows 3, 3, 1 twice
    assert head.optimizer_steps == 6
    assert all(p.grad is None for p in head.module.parameters())
    expected = sgd_reference(start, windows_of(head.seen, [3, 3, 1, 3, 3, 1]), lr=0.1)
    torch.testing.assert_close(head.module.state_dict(), expected.state_dict())


def test_callbacks_that_skip_batches_flush_their_window_at_epoch_end():
    torch.manual_seed(0)
    start = nn.Linear(3, 1)
    head = Regressor(
        module=copy.deepcopy(start), optimizer={"type": "SGD", "lr": 0.1},
        accumulate_grad_batches=2, every=3,
    )  # fmt: skip
    fit([head], n=56)  # trains on batches 0, 3, 6: one window of 2, then one of 1
    assert len(head.seen) == 3 and head.optimizer_steps == 2
    expected = sgd_reference(start, windows_of(head.seen, [2, 1]), lr=0.1)
    torch.testing.assert_close(head.module.state_dict(), expected.state_dict())


def test_a_run_stopped_mid_epoch_leaves_no_gradient_behind():
    head = Regressor(optimizer="SGD", accumulate_grad_batches=3)
    fit([head], n=56, max_steps=4)
    assert head.optimizer_steps == 2
    assert all(p.grad is None for p in head.module.parameters())


def test_cosine_horizon_counts_accumulated_steps():
    head = Regressor(optimizer="SGD", scheduler="CosineAnnealingLR", accumulate_grad_batches=4)
    fit([head], n=48, epochs=2)  # 6 batches per epoch -> windows of 4 and 2
    assert head.scheduler.T_max == 4 == head.optimizer_steps
    assert head.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------- placement


def test_module_is_exposed_but_never_registered_on_the_lightning_module():
    head = Regressor()
    _, model = fit([head], max_steps=1)
    assert callbacks_modules(model)["head"] is head.module
    assert set(model.state_dict()) == {"weight"}  # the Backbone's own parameter only
    assert all(p.device == model.device for p in head.module.parameters())


def test_defaults_are_adamw_and_a_constant_rate():
    head = Regressor()
    fit([head], max_steps=3)
    assert type(head.optimizer) is torch.optim.AdamW and head.optimizer.defaults["lr"] == 1e-3
    assert head.scheduler.get_last_lr() == [1e-3]
    assert type(head.scheduler) is torch.optim.lr_scheduler.ConstantLR
    assert head.scheduler_config.interval == "epoch"  # nothing to do per batch


def test_validate_alone_builds_the_module_but_no_optimizer():
    head = Regressor()
    trainer = quiet_trainer(callbacks=[head])
    model = Backbone()
    trainer.validate(model, DataLoader(rows(16), batch_size=8), verbose=False)
    assert callbacks_modules(model)["head"] is head.module
    with pytest.raises(RuntimeError, match="built when fit starts"):
        _ = head.optimizer


def test_module_before_setup_is_a_clear_error():
    with pytest.raises(RuntimeError, match="built at setup"):
        _ = Regressor().module


@pytest.mark.parametrize(
    ("module", "checked"),
    [
        (nn.Linear(3, 1), True),
        (nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)), True),
        (nn.Sequential(nn.Flatten(), nn.Linear(3, 1)), False),  # the width is not declared
    ],
)
def test_features_that_do_not_fit_the_first_layer_name_both_sizes(module, checked):
    wide = Regressor(module=module)
    wide.setup(_stub_trainer(), Backbone(), "validate")
    wide.check_input_width(torch.zeros(2, 3), "x")
    if not checked:
        wide.check_input_width(torch.zeros(2, 5), "x")
        return
    with pytest.raises(ValueError, match=r"Regressor\[name=head\]: 'x' has 5 features per row, "
                       r"but the module's first layer takes 3"):  # fmt: skip
        wide.check_input_width(torch.zeros(2, 5), "x")


# ----------------------------------------------------------------------------- contexts


def test_training_context_leaves_the_global_rng_alone_and_escapes_autocast():
    head = Regressor(module=nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5)))
    fit([head], max_steps=1)
    x = head.prepare_input(torch.randn(5, 3, dtype=torch.bfloat16))
    state = torch.get_rng_state()
    with torch.autocast("cpu", dtype=torch.bfloat16), head.training_context() as module:
        out = module(x)
        assert module.training and torch.is_grad_enabled()
    assert torch.equal(torch.get_rng_state(), state)
    assert x.dtype == out.dtype == torch.float32 and out.requires_grad
    with torch.autocast("cpu", dtype=torch.bfloat16), head.evaluation_context() as module:
        out = module(x)
        assert not module.training
    assert out.dtype == torch.float32 and not out.requires_grad


def test_prepare_input_detaches_and_casts_floats_only():
    head = Regressor(module=nn.Linear(3, 1).double())
    head.setup(_stub_trainer(), Backbone(), "validate")
    x = torch.ones(2, 3, requires_grad=True).to(torch.float16)
    prepared = head.prepare_input(x)
    assert prepared.dtype == torch.float64 and not prepared.requires_grad
    assert head.prepare_input(torch.arange(3)).dtype == torch.int64


# ----------------------------------------------------------------------------- module forms


def test_callable_gets_the_lightning_module_when_it_asks_for_it():
    built = {}

    def make(pl_module):
        built["model"] = pl_module
        return nn.Linear(3, 1)

    head = Regressor(module=make)
    _, model = fit([head], max_steps=1)
    assert built["model"] is model


def test_building_from_a_callable_does_not_consume_the_global_rng():
    head, model = Regressor(module=lambda: nn.Linear(3, 1)), Backbone()
    state = torch.get_rng_state()
    head.setup(_stub_trainer(), model, "validate")
    assert torch.equal(torch.get_rng_state(), state)
    assert isinstance(head.module, nn.Linear)


def test_a_callable_must_produce_a_module():
    head = Regressor(module=lambda: "linear")
    with pytest.raises(TypeError, match="module produced str"):
        head.setup(_stub_trainer(), Backbone(), "validate")


def test_bad_module_form_is_refused_at_construction():
    with pytest.raises(TypeError, match=r"module must be an nn\.Module"):
        TrainableCallback("x", module={"in_features": 3})


def test_hydra_config_is_instantiated_through_hydra(monkeypatch):
    calls = []

    def instantiate(config, **kwargs):
        calls.append((dict(config), kwargs))
        return nn.Linear(config["in_features"], config["out_features"])

    hydra = types.ModuleType("hydra")
    hydra.utils = types.ModuleType("hydra.utils")
    hydra.utils.instantiate = instantiate
    monkeypatch.setitem(sys.modules, "hydra", hydra)
    monkeypatch.setitem(sys.modules, "hydra.utils", hydra.utils)
    config = {"_target_": "torch.nn.Linear", "in_features": 3, "out_features": 2}
    head = Regressor(module=config)
    head.setup(_stub_trainer(), Backbone(), "validate")
    assert head.module.out_features == 2
    assert calls == [(config, {"_convert_": "object"})]


def test_hydra_config_with_real_hydra():
    pytest.importorskip("hydra")
    head = Regressor(module={"_target_": "torch.nn.Linear", "in_features": 3, "out_features": 2})
    head.setup(_stub_trainer(), Backbone(), "validate")
    assert isinstance(head.module, nn.Linear)


def test_hydra_config_without_hydra_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "hydra", None)  # makes `import hydra` fail
    monkeypatch.setitem(sys.modules, "hydra.utils", None)  # even after a real import
    head = Regressor(module={"_target_": "torch.nn.Linear", "in_features": 3, "out_features": 2})
    with pytest.raises(ImportError, match="pip install hydra-core"):
        head.setup(_stub_trainer(), Backbone(), "validate")


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"accumulate_grad_batches": 0}, ValueError, "accumulate_grad_batches"),
        ({"accumulate_grad_batches": 2.0}, TypeError, "accumulate_grad_batches"),
        ({"gradient_clip_val": 0}, ValueError, "gradient_clip_val"),
        ({"gradient_clip_val": True}, TypeError, "gradient_clip_val"),
        ({"gradient_clip_algorithm": "max"}, ValueError, "gradient_clip_algorithm"),
        ({"optimizer": 5}, TypeError, "optimizer must be"),
        ({"scheduler": {"type": "LambdaLR"}}, TypeError, "lr_lambda"),
    ],
)
def test_bad_training_options_are_named(kwargs, error, match):
    with pytest.raises(error, match=match) as caught:
        TrainableCallback("head", module=nn.Linear(3, 1), **kwargs)
    assert str(caught.value).startswith("TrainableCallback[name=head]: ")


def test_a_module_without_parameters_cannot_be_trained():
    with pytest.raises(ValueError, match="no trainable parameters"):
        fit([Regressor(module=nn.ReLU())], max_steps=1)


# ----------------------------------------------------------------------------- checkpoints


def _stub_trainer(batches=10):
    """The few Trainer attributes the stepping logic reads."""
    return SimpleNamespace(
        callbacks=[],
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
        num_training_batches=batches,
        callback_metrics={},
        accumulate_grad_batches=1,
        current_epoch=0,
        is_global_zero=True,
    )


def _call(head, trainer, batch_idx, seed):
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(seed))
    with head.training_context() as module:
        loss = module(x).square().mean()
    return head.backward_and_step(loss, trainer, batch_idx)


def test_a_mid_window_checkpoint_resumes_exactly():
    trainer = _stub_trainer()
    torch.manual_seed(0)
    start = nn.Linear(3, 1)
    kwargs = {
        "optimizer": {"type": "SGD", "lr": 0.1, "momentum": 0.9},
        "accumulate_grad_batches": 3,
        "scheduler": {"type": "StepLR", "step_size": 1},
    }
    straight = Regressor(module=copy.deepcopy(start), **kwargs)
    straight.setup(trainer, Backbone(), "fit")
    for i in range(5):
        assert _call(straight, trainer, i, seed=i) == (i == 2)
    state = copy.deepcopy(straight.state_dict())
    assert state["window_count"] == 2 and state["grads"][0] is not None

    resumed = Regressor(module=nn.Linear(3, 1), **kwargs)
    resumed.load_state_dict(state)  # before setup: kept until the module exists
    resumed.setup(trainer, Backbone(), "fit")
    for p, q in zip(straight.module.parameters(), resumed.module.parameters(), strict=True):
        assert torch.equal(p, q) and torch.equal(p.grad, q.grad)
    assert _call(straight, trainer, 5, seed=5) and _call(resumed, trainer, 5, seed=5)
    for p, q in zip(straight.module.parameters(), resumed.module.parameters(), strict=True):
        assert torch.equal(p, q)
    assert straight.optimizer_steps == resumed.optimizer_steps == 2
    assert straight.scheduler.state_dict() == resumed.scheduler.state_dict()


def test_state_dict_before_setup_round_trips():
    head = Regressor()
    assert head.state_dict() == {}
    head.load_state_dict({"module": nn.Linear(3, 1).state_dict()})
    assert set(head.state_dict()) == {"module"}


def test_resume_through_a_lightning_checkpoint(tmp_path):
    def fresh():
        torch.manual_seed(0)
        return Regressor(
            optimizer={"type": "SGD", "lr": 0.05, "momentum": 0.9}, accumulate_grad_batches=3
        )

    straight = fresh()
    fit([straight], epochs=2)
    first = fresh()
    trainer, _ = fit([first], epochs=1)
    trainer.save_checkpoint(tmp_path / "one.ckpt")
    resumed = fresh()
    model = Backbone()
    trainer = quiet_trainer(max_epochs=2, callbacks=[resumed])
    trainer.fit(model, DataLoader(rows(56), batch_size=8), ckpt_path=tmp_path / "one.ckpt")
    torch.testing.assert_close(
        resumed.module.state_dict(), straight.module.state_dict(), rtol=0, atol=0
    )
    assert resumed.optimizer_steps == straight.optimizer_steps == 6


def test_a_checkpoint_at_an_epochs_last_batch_replays_the_skipped_epoch_end(tmp_path):
    """Lightning resumes a checkpoint written at epoch 0's last batch in epoch 1 without calling
    epoch 0's ``on_train_epoch_end``: the resumed callback flushes the unfinished window (1 of 3
    calls, no ``batch_idx``) and steps the epoch scheduler itself, as the uninterrupted one did."""

    def fresh():
        torch.manual_seed(0)
        return Regressor(
            optimizer={"type": "SGD", "lr": 0.05, "momentum": 0.9},
            scheduler={"type": "StepLR", "step_size": 1, "gamma": 0.5, "interval": "epoch"},
            accumulate_grad_batches=3,
            pass_batch_idx=False,
        )

    def fit_from(callback, resume=None):
        saver = ModelCheckpoint(tmp_path, "{step}", every_n_train_steps=7, save_top_k=-1)
        trainer = quiet_trainer(
            max_epochs=2, callbacks=[callback, saver], enable_checkpointing=True
        )
        trainer.fit(Backbone(), ResumableLoader(rows(56), batch_size=8), ckpt_path=resume)

    straight, resumed = fresh(), fresh()
    fit_from(straight)
    fit_from(resumed, tmp_path / "step=7.ckpt")  # 7 batches per epoch: epoch 0's last
    assert resumed.optimizer_steps == straight.optimizer_steps == 6  # windows of 3, 3, 1
    assert resumed.scheduler.state_dict() == straight.scheduler.state_dict()
    torch.testing.assert_close(
        resumed.module.state_dict(), straight.module.state_dict(), rtol=0, atol=0
    )


# ----------------------------------------------------------------------------- no validation


class Announcer(SPTCallback):
    def on_train_start(self, trainer, pl_module):
        self.info_if_no_validation(trainer, "eval/announcer_*")


@pytest.mark.parametrize(
    ("val_rows", "limit", "said"),
    [(8, 1.0, False), (0, 1.0, True), (8, 0, True)],
    ids=["validation", "empty-loader", "limit-0"],
)
def test_a_fit_without_validation_batches_is_said_once(val_rows, limit, said):
    with captured_logs() as lines:
        trainer = quiet_trainer(
            max_epochs=2, limit_val_batches=limit, callbacks=[Announcer("announcer")]
        )
        trainer.fit(Backbone(), DataLoader(rows(16), batch_size=8), DataLoader(rows(val_rows)))
    expected = "no validation batch (limit_val_batches=0 or an empty validation loader): "
    assert [expected in line and "eval/announcer_*" in line for line in lines] == [True] * said
