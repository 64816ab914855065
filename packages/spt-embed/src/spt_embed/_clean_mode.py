"""The clean mode of ``embed_loader``: eval mode, no logging, untouched metrics and RNG."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn

_SILENCED = ("log", "log_dict")


def _ignore(*args: Any, **kwargs: Any) -> None:
    """Stands in for ``LightningModule.log`` while embedding."""


def _metrics(pl_module: LightningModule) -> list[nn.Module]:
    """The torchmetrics ``Metric`` submodules (none if torchmetrics was never imported)."""
    torchmetrics = sys.modules.get("torchmetrics")
    if torchmetrics is None:
        return []
    return [module for module in pl_module.modules() if isinstance(module, torchmetrics.Metric)]


@contextmanager
def _kept_metrics(pl_module: LightningModule) -> Iterator[None]:
    """Every torchmetrics ``Metric`` of the module works on copies of its states; afterwards its
    attributes (states, update count, cached ``compute``...) are the originals again."""
    metrics = _metrics(pl_module)
    saved = [dict(metric.__dict__) for metric in metrics]
    for metric in metrics:
        for name in metric._defaults:
            state = getattr(metric, name)
            copied = state.clone() if isinstance(state, Tensor) else list(state)
            object.__setattr__(metric, name, copied)
    try:
        yield
    finally:
        for metric, attributes in zip(metrics, saved, strict=True):
            for name in set(metric.__dict__) - set(attributes):
                del metric.__dict__[name]
            metric.__dict__.update(attributes)


@contextmanager
def clean_mode(pl_module: LightningModule, device: torch.device) -> Iterator[None]:
    """Eval mode, silenced ``log``, kept metrics and forked random streams; restores every mode,
    ``requires_grad``, ``log``, metric state and the random streams."""
    modes = [(module, module.training) for module in pl_module.modules()]
    flags = [(parameter, parameter.requires_grad) for parameter in pl_module.parameters()]
    shadowed = {name: pl_module.__dict__[name] for name in _SILENCED if name in pl_module.__dict__}
    accelerated = [device] if device.type != "cpu" else []
    try:
        pl_module.eval()
        for name in _SILENCED:
            object.__setattr__(pl_module, name, _ignore)
        with (
            _kept_metrics(pl_module),
            torch.random.fork_rng(devices=accelerated, device_type=device.type),
        ):
            yield
    finally:
        for name in _SILENCED:
            pl_module.__dict__.pop(name, None)
        pl_module.__dict__.update(shadowed)
        for module, training in modes:
            module.training = training
        for parameter, requires_grad in flags:
            parameter.requires_grad_(requires_grad)
