"""A linear evaluation by hand: a freshly initialised probe trained on cached features.

:class:`~spt_probe.OnlineProbe`'s clean evaluation (``clean_loader=...``) runs exactly these
two functions on the features it embedded; they work on their own for an offline evaluation.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from spt_core.checks import finite_rows, positive_int
from spt_probe._function_checks import check_loss_fn, check_probe, check_tensors, same_rows
from spt_probe.functional import LossFn, probe_step
from spt_trainable.optimizers import OptimizerSpec, create_optimizer

__all__ = ["DEFAULT_FIT_OPTIMIZER", "fit_probe", "fresh_probe", "not_reset"]

#: The optimizer of :func:`fit_probe` when none is given.
DEFAULT_FIT_OPTIMIZER: Mapping[str, Any] = {"type": "AdamW", "lr": 1e-3}


def fresh_probe(probe: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``probe``'s architecture with fresh parameters drawn from ``seed``.

    The copy is re-initialised on the CPU, as if built right after ``torch.manual_seed(seed)``:
    every submodule with a ``reset_parameters`` method calls it, in ``modules()`` order (the
    order a ``nn.Sequential`` builds them), on a forked random stream (the global one is left
    as it was). Parameters of modules without ``reset_parameters`` keep ``probe``'s values
    (see :func:`not_reset`). The copy is then moved to ``probe``'s device; ``probe`` itself is
    not touched.

    Args:
        probe: The architecture to copy (any ``nn.Module``).
        seed: The seed of the initialisation.

    Returns:
        The new module, in train mode.

    Raises:
        TypeError: If ``probe`` is not an ``nn.Module`` or ``seed`` not an int.
        ValueError: If ``seed`` is negative.

    Example:
        >>> torch.manual_seed(3); expected = nn.Linear(4, 2)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> torch.equal(fresh_probe(nn.Linear(4, 2), seed=3).weight, expected.weight)
        True
    """
    check_probe("fresh_probe", probe)
    positive_int(seed, "fresh_probe: seed", 0)
    device = next((p.device for p in probe.parameters()), torch.device("cpu"))
    fresh = copy.deepcopy(probe).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in fresh.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    return fresh.to(device).train()


def not_reset(probe: nn.Module) -> list[str]:
    """Names of ``probe``'s parameters that :func:`fresh_probe` does not re-initialise.

    Example:
        >>> class Scaled(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.linear, self.scale = nn.Linear(2, 2), nn.Parameter(torch.ones(()))
        >>> not_reset(Scaled())
        ['scale']
    """
    missing = []
    for prefix, module in probe.named_modules():
        if callable(getattr(module, "reset_parameters", None)):
            continue
        for name, _ in module.named_parameters(recurse=False):
            missing.append(f"{prefix}.{name}" if prefix else name)
    return missing


def fit_probe(
    probe: nn.Module,
    features: Tensor,
    labels: Tensor,
    *,
    epochs: int = 10,
    batch_size: int = 256,
    optimizer: OptimizerSpec | None = None,
    loss_fn: LossFn | None = None,
    seed: int = 0,
) -> nn.Module:
    """Train ``probe`` in place on cached ``features`` for ``epochs`` passes.

    The budget is ``epochs * len(features)`` rows of probe forward and backward. Each pass
    visits the rows in the order of ``torch.randperm(N, generator=g)``, with one CPU generator
    ``g`` seeded by ``seed`` for the whole call, in minibatches of ``batch_size`` (the last
    one shorter); each minibatch runs :func:`~spt_probe.probe_step` (rows with a non-finite
    feature zeroed and left out of the loss, as are unlabelled rows), ``zero_grad``,
    ``backward`` and one step of a new optimizer over the probe's trainable parameters. Any
    randomness of the probe (dropout) draws from a forked stream seeded by ``seed``; autocast
    is off. Nothing waits on the device.

    Args:
        probe: The module to train (on ``features``' device).
        features: ``(N, ...)`` features, rows first (detached here).
        labels: ``(N,)`` integer class labels, ``< 0`` for unlabelled rows (or the targets
            ``loss_fn`` takes).
        epochs: Passes over the rows (``0`` leaves the probe as it is).
        batch_size: Rows per optimizer step.
        optimizer: A form of :func:`spt_trainable.create_optimizer` other than an instance;
            ``None`` is ``AdamW(lr=1e-3)``.
        loss_fn: See :func:`~spt_probe.probe_loss`; ``None`` is cross-entropy over the
            labelled rows.
        seed: Seeds the order of the rows and the probe's randomness.

    Returns:
        ``probe``, trained, in train mode.

    Raises:
        TypeError: If ``probe`` is not an ``nn.Module``, ``features`` or ``labels`` not a
            tensor, ``epochs``, ``batch_size`` or ``seed`` not an int, ``loss_fn`` not callable
            or ``optimizer`` not a form of :func:`spt_trainable.create_optimizer`.
        ValueError: If ``epochs < 0``, ``batch_size < 1``, ``seed < 0``, a tensor is 0-d or
            ``labels`` does not hold one entry per row of ``features``.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).repeat(8, 1)
        >>> y = torch.tensor([0, 1]).repeat(8)
        >>> probe = fit_probe(nn.Linear(2, 2), x, y, epochs=50, batch_size=4,
        ...                   optimizer={"type": "SGD", "lr": 0.5})
        >>> probe(x[:2]).argmax(1).tolist()
        [0, 1]
    """
    positive_int(epochs, "fit_probe: epochs", 0)
    positive_int(batch_size, "fit_probe: batch_size")
    positive_int(seed, "fit_probe: seed", 0)
    check_probe("fit_probe", probe)
    check_tensors("fit_probe", features=features, labels=labels)
    same_rows("fit_probe", ("features", features), ("labels", labels))
    check_loss_fn("fit_probe", loss_fn)
    spec = DEFAULT_FIT_OPTIMIZER if optimizer is None else optimizer
    trained = [p for p in probe.parameters() if p.requires_grad]
    steps = create_optimizer(trained, dict(spec) if isinstance(spec, Mapping) else spec)
    features, device = features.detach(), features.device
    finite = finite_rows(features)
    order = torch.Generator().manual_seed(seed)
    accelerated = [device] if device.type != "cpu" else []
    probe.train()
    with (
        torch.random.fork_rng(devices=accelerated, device_type=device.type),
        torch.autocast(device.type, enabled=False),
        torch.enable_grad(),
    ):
        torch.manual_seed(seed)
        for _ in range(epochs):
            for rows in torch.randperm(len(features), generator=order).to(device).split(batch_size):
                step = probe_step(probe, features[rows], labels[rows], loss_fn, finite=finite[rows])
                steps.zero_grad(set_to_none=True)
                step.loss.backward()
                steps.step()
    steps.zero_grad(set_to_none=True)
    return probe
