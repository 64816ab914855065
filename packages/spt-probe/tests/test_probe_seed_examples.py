"""Every optimizer and scheduler example of the seed's OnlineProbe page, in a real fit, and
the default optimizer against a hand-written reference of the seed's LARS."""

import functools
import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, StepLR
from torchmetrics.classification import MulticlassAccuracy

from spt_probe import OnlineProbe
from spt_trainable import LARS

STEPS = 6  # optimizer steps per epoch: 48 rows in batches of 8
EPOCHS = 2


class Batches(L.Callback):
    """The (features, labels) pairs the probe trains on, in order."""

    def __init__(self):
        self.seen = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append((outputs["embedding"].detach().clone(), batch["label"].clone()))


def fit_probe(backbone, trainer, loader, data, module, **kwargs):
    torch.manual_seed(0)
    probe = OnlineProbe(
        name="linear",
        input="embedding",
        target="label",
        probe=module,
        metrics=MulticlassAccuracy(3),
        **kwargs,
    )
    batches = Batches()
    run = trainer(callbacks=[batches, probe], max_epochs=EPOCHS)
    run.fit(backbone(), loader(data), loader(data))
    return probe, run, batches.seen


def fresh_linear():
    torch.manual_seed(1)
    return nn.Linear(5, 3)


def trained_and_logged(probe, run, start):
    assert not torch.equal(probe.module.weight, start.weight)
    assert torch.isfinite(run.callback_metrics["train/linear_loss"])
    assert "eval/linear_accuracy" in run.callback_metrics
    assert probe.optimizer_steps == EPOCHS * STEPS


# The seed page's optimizer examples: "str: optimizer name (e.g., 'AdamW', 'SGD', 'LARS')",
# "dict: {'type': 'AdamW', 'lr': 1e-3, ...}", "partial: pre-configured optimizer factory",
# "optimizer instance or callable", "None: uses LARS(lr=0.1, clip_lr=True, eta=0.02,
# exclude_bias_n_norm=True, weight_decay=0)".
OPTIMIZERS = {
    "str-AdamW": ("AdamW", torch.optim.AdamW, 1e-3),
    "str-SGD": ("SGD", torch.optim.SGD, 1e-3),
    "str-LARS": ("LARS", LARS, 0.1),
    "dict": ({"type": "AdamW", "lr": 1e-3}, torch.optim.AdamW, 1e-3),
    "partial": (functools.partial(torch.optim.AdamW, lr=1e-3), torch.optim.AdamW, 1e-3),
    "instance": ("instance", torch.optim.SGD, 0.2),
    "callable": (lambda params: torch.optim.SGD(params, lr=0.2), torch.optim.SGD, 0.2),
    "None": (None, LARS, 0.1),
}


@pytest.mark.parametrize("example", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_every_optimizer_example_of_the_seed_page_trains(backbone, trainer, loader, data, example):
    form, cls, lr = example
    module = fresh_linear()
    start = nn.Linear(5, 3)
    start.load_state_dict(module.state_dict())
    if form == "instance":
        form = torch.optim.SGD(module.parameters(), lr=0.2)
    probe, run, _ = fit_probe(backbone, trainer, loader, data, module, optimizer=form)
    assert type(probe.optimizer) is cls
    assert probe.optimizer.param_groups[0]["lr"] == pytest.approx(lr)
    trained_and_logged(probe, run, start)


# The seed page's scheduler examples: "str: scheduler name (e.g., 'CosineAnnealingLR',
# 'StepLR')", "dict: {'type': 'CosineAnnealingLR', 'T_max': 1000, ...}", "partial:
# pre-configured scheduler factory", "scheduler instance or callable", "None: uses
# ConstantLR(factor=1.0)". Each: (form, class, learning rate after the fit, for lr 0.1).
TOTAL = EPOCHS * STEPS
SCHEDULERS = {
    "str-CosineAnnealingLR": ("CosineAnnealingLR", CosineAnnealingLR, 0.0),
    "str-StepLR": ("StepLR", StepLR, 0.1 * 0.1 ** (TOTAL // math.ceil(TOTAL / 3))),
    "dict": (
        {"type": "CosineAnnealingLR", "T_max": 1000},
        CosineAnnealingLR,
        0.05 * (1 + math.cos(math.pi * TOTAL / 1000)),
    ),
    "partial": (functools.partial(StepLR, step_size=5, gamma=0.5), StepLR, 0.1 * 0.5**2),
    "instance": ("instance", StepLR, 0.1 * 0.5**4),
    "callable": (lambda opt: StepLR(opt, step_size=6, gamma=0.5), StepLR, 0.1 * 0.5**2),
    "None": (None, ConstantLR, 0.1),
}


@pytest.mark.parametrize("example", SCHEDULERS.values(), ids=SCHEDULERS.keys())
def test_every_scheduler_example_of_the_seed_page_trains(backbone, trainer, loader, data, example):
    form, cls, final_lr = example
    module = fresh_linear()
    start = nn.Linear(5, 3)
    start.load_state_dict(module.state_dict())
    optimizer = None
    if form == "instance":
        optimizer = LARS(module.parameters(), lr=0.1, clip_lr=True, eta=0.02)
        form = StepLR(optimizer, step_size=3, gamma=0.5)
    probe, run, _ = fit_probe(
        backbone, trainer, loader, data, module, optimizer=optimizer, scheduler=form
    )
    assert type(probe.scheduler) is cls
    assert probe.optimizer.param_groups[0]["lr"] == pytest.approx(final_lr, rel=1e-9, abs=1e-12)
    trained_and_logged(probe, run, start)


def test_step_lr_by_name_decays_tenfold_each_third_of_the_run(backbone, trainer, loader, data):
    lrs = []

    class Rates(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            lrs.append(probe.optimizer.param_groups[0]["lr"])

    probe = OnlineProbe(
        name="linear", input="embedding", target="label", probe=nn.Linear(5, 3), scheduler="StepLR"
    )
    trainer(callbacks=[probe, Rates()], max_epochs=3).fit(backbone(), loader(data))
    assert probe.scheduler.step_size == 3 * STEPS // 3
    assert lrs == pytest.approx([0.1] * 6 + [0.01] * 6 + [0.001] * 6)


# ----------------------------------------------------------------------------- default LARS


def seed_lars(start: nn.Linear, batches, lr=0.1, eta=0.02, eps=1e-8):
    """The seed's default by hand, in float64: no momentum, no weight decay; the weight
    matrix steps by ``lr * min(eta * |w| / (|g| + eps) / lr, 1) * g``, the bias (1-D,
    excluded) by ``lr * g``. Returns the weights and how many steps the trust ratio clipped."""
    weight = start.weight.detach().double().clone()
    bias = start.bias.detach().double().clone()
    scaled = 0
    for x, y in batches:
        weight.requires_grad_(True)
        bias.requires_grad_(True)
        loss = F.cross_entropy(x.double() @ weight.T + bias, y)
        grad_w, grad_b = torch.autograd.grad(loss, (weight, bias))
        with torch.no_grad():
            w_norm, g_norm = weight.norm().item(), grad_w.norm().item()
            factor = min(eta * w_norm / (g_norm + eps) / lr, 1.0)
            scaled += factor < 1.0
            weight = weight - lr * factor * grad_w
            bias = bias - lr * grad_b
    return weight, bias, scaled


def test_the_default_optimizer_steps_like_the_seeds_lars(backbone, trainer, loader, data):
    module = fresh_linear()
    start = nn.Linear(5, 3)
    start.load_state_dict(module.state_dict())
    probe, _, batches = fit_probe(backbone, trainer, loader, data, module)
    assert len(batches) == EPOCHS * STEPS
    weight, bias, scaled = seed_lars(start, batches)
    assert scaled > 0  # the layer-wise trust ratio mattered on some steps
    torch.testing.assert_close(probe.module.weight.detach().double(), weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(probe.module.bias.detach().double(), bias, rtol=1e-5, atol=1e-6)
