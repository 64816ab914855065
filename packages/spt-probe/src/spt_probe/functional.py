"""The probe's step, loss and prediction as plain functions.

:class:`~spt_probe.OnlineProbe` runs exactly these on every batch (inside its own training or
evaluation context, which adds the optimizer, accumulation, DDP and logging); they work on
their own for a probe trained by hand. Nothing here waits on the device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spt_core.checks import finite_rows
from spt_probe._function_checks import (
    check_finite,
    check_loss_fn,
    check_probe,
    check_tensors,
    same_rows,
)
from spt_probe._targets import check_targets, ignore_index_of, is_class_labels

__all__ = [
    "ProbeStep",
    "check_targets",
    "is_class_labels",
    "masked_cross_entropy",
    "prepare_features",
    "probe_loss",
    "probe_predict",
    "probe_step",
]

LossFn = Callable[[Tensor, Tensor], Tensor]  # (logits, target) -> a scalar


class ProbeStep(NamedTuple):
    """What :func:`probe_step` computed for one batch.

    Args:
        logits: The probe's outputs, attached to its graph.
        loss: The scalar loss to call ``backward`` on.
        rows: How many rows ``loss`` averages (a 0-d integer tensor): the labelled rows with
            finite features when unlabelled rows are left out, else every row.

    Example:
        >>> step = ProbeStep(torch.zeros(2, 3), torch.tensor(1.1), torch.tensor(2))
        >>> step.loss, int(step.rows)
        (tensor(1.1000), 2)
    """

    logits: Tensor
    loss: Tensor
    rows: Tensor


def masked_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Mean cross-entropy over the rows whose target is a class, ``0 <= target < C``; rows
    with ``target < 0`` (unlabelled) or ``target >= C`` (no such class, which
    :class:`~spt_probe.OnlineProbe` reports at the end of the epoch) contribute nothing.

    The mask is applied arithmetically, without indexing by it, so no host synchronisation
    happens. When no row is labelled the loss is 0 (and so is its gradient).

    Args:
        logits: ``(N, C)`` unnormalised class scores.
        target: ``(N,)`` integer class indices; values outside ``[0, C)`` are ignored.

    Returns:
        A scalar tensor in ``logits``' dtype.

    Raises:
        TypeError: If ``logits`` or ``target`` is not a tensor.
        ValueError: If ``logits`` is not 2-D or ``target`` is not a 1-D tensor of N rows.

    Example:
        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [5.0, -5.0]])
        >>> masked_cross_entropy(logits, torch.tensor([0, 1, -1]))
        tensor(0.1269)
        >>> masked_cross_entropy(logits, torch.tensor([0, 1, 7]))
        tensor(0.1269)
        >>> F.cross_entropy(logits[:2], torch.tensor([0, 1]))
        tensor(0.1269)
    """
    check_tensors("masked_cross_entropy", logits=logits, target=target)
    if logits.ndim != 2 or target.ndim != 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(
            f"masked_cross_entropy needs logits (N, C) and target (N,), got "
            f"{tuple(logits.shape)} and {tuple(target.shape)}"
        )
    labelled = (target >= 0) & (target < logits.shape[1])
    per_row = F.cross_entropy(logits, target.clamp(0, logits.shape[1] - 1).long(), reduction="none")
    count = labelled.sum().clamp(min=1)
    return torch.where(labelled, per_row, torch.zeros_like(per_row)).sum() / count


def prepare_features(features: Tensor, probe: nn.Module) -> Tensor:
    """``features`` detached, on the probe's device, floating values in the probe's dtype.

    Args:
        features: A batch of features.
        probe: The module they feed (its first floating-point parameter sets device and dtype;
            without one, ``features`` are only detached).

    Returns:
        The features to feed ``probe``, cut from the backbone's graph.

    Raises:
        TypeError: If ``features`` is not a tensor.

    Example:
        >>> x = torch.ones(2, 3, dtype=torch.bfloat16, requires_grad=True)
        >>> prepare_features(x, torch.nn.Linear(3, 2)).dtype
        torch.float32
    """
    check_tensors("prepare_features", features=features)
    features = features.detach()
    weight = next((p for p in probe.parameters() if p.is_floating_point()), None)
    if weight is None:
        return features
    dtype = weight.dtype if features.is_floating_point() else features.dtype
    return features.to(device=weight.device, dtype=dtype)


def probe_loss(
    logits: Tensor, target: Tensor, loss_fn: LossFn | None = None, *, finite: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The loss a probe steps on, and how many rows it averages.

    With class labels (one integer per row, see :func:`is_class_labels`) and the default loss
    or a ``loss_fn`` with an integer ``ignore_index`` (``nn.CrossEntropyLoss``), unlabelled
    rows (``< 0``), labels without an output (``>= C``) and rows not ``finite`` are left out:
    the default loss skips them, the other receives them as its ``ignore_index``, and a batch
    without a labelled row gives a zero loss (no ``nan``). Any other target or ``loss_fn``
    gets every row as it is.

    Args:
        logits: ``(N, C)`` outputs of the probe.
        target: ``(N, ...)`` targets on ``logits``' device.
        loss_fn: ``loss_fn(logits, target)`` returning a scalar; ``None`` (or
            :func:`masked_cross_entropy`) is cross-entropy over the labelled rows.
        finite: ``(N,)`` bool, the rows whose features were finite; ``None``: every row.

    Returns:
        ``(loss, rows)``: the scalar loss and a 0-d integer tensor, the rows it averages.

    Raises:
        TypeError: If ``logits`` or ``target`` is not a tensor, ``loss_fn`` not callable or
            ``finite`` not a bool tensor.
        ValueError: If a tensor is 0-d or they do not hold as many rows.

    Example:
        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [5.0, -5.0]])
        >>> probe_loss(logits, torch.tensor([0, 1, -1]))
        (tensor(0.1269), tensor(2))
        >>> loss, rows = probe_loss(logits, torch.tensor([0, -1, -1]), torch.nn.CrossEntropyLoss(),
        ...                         finite=torch.tensor([False, True, True]))
        >>> loss, rows
        (tensor(0.), tensor(0))
    """
    check_tensors("probe_loss", logits=logits, target=target)
    same_rows("probe_loss", ("logits", logits), ("target", target))
    check_loss_fn("probe_loss", loss_fn)
    check_finite("probe_loss", finite, logits.shape[0])
    ignore = ignore_index_of(loss_fn)
    default = loss_fn is None or loss_fn is masked_cross_entropy
    if not is_class_labels(target) or not (default or ignore is not None):
        return loss_fn(logits, target), torch.full((), target.shape[0], device=logits.device)
    labelled = (target >= 0) & (target < logits.shape[-1])
    if finite is not None:
        labelled = finite & labelled
    if default:
        return masked_cross_entropy(logits, torch.where(labelled, target, -1)), labelled.sum()
    loss = loss_fn(logits, torch.where(labelled, target, ignore))
    # A mean over no row is 0/0: such a batch steps on a zero gradient, not a nan.
    return torch.where(labelled.any(), loss, torch.zeros_like(loss)), labelled.sum()


def probe_step(
    probe: nn.Module,
    features: Tensor,
    target: Tensor,
    loss_fn: LossFn | None = None,
    *,
    finite: Tensor | None = None,
) -> ProbeStep:
    """One training forward of a probe on frozen features: what to call ``backward`` on.

    The features are prepared (:func:`prepare_features`: detached, so no gradient reaches the
    backbone); rows with a non-finite feature are zeroed (one NaN would turn every weight of
    the probe into NaN) and left out of the loss like unlabelled rows (:func:`probe_loss`).
    The probe runs in the mode it is in; call ``probe.train()`` first.

    Args:
        probe: The probe module.
        features: ``(N, ...)`` features, rows first.
        target: ``(N, ...)`` targets (class indices, ``< 0`` for unlabelled rows, or
            whatever ``loss_fn`` takes).
        loss_fn: See :func:`probe_loss`.
        finite: ``(N,)`` bool, which rows are finite, if already known; ``None`` computes it.

    Returns:
        A :class:`ProbeStep`: ``logits``, ``loss`` and the ``rows`` the loss averages.

    Raises:
        TypeError: If ``probe`` is not an ``nn.Module``, ``features`` or ``target`` not a
            tensor, ``loss_fn`` not callable or ``finite`` not a bool tensor.
        ValueError: If ``features`` or ``target`` is 0-d or they, and ``finite``, do not hold
            as many rows.

    Example:
        >>> probe = torch.nn.Linear(2, 3)
        >>> x = torch.tensor([[1.0, 0.0], [float("nan"), 1.0], [0.0, 1.0]])
        >>> step = probe_step(probe, x, torch.tensor([0, 2, -1]))
        >>> step.rows  # row 1 is not finite, row 2 is unlabelled
        tensor(1)
        >>> step.loss.backward()
        >>> bool(probe.weight.grad.isfinite().all())
        True
    """
    check_probe("probe_step", probe)
    check_tensors("probe_step", features=features, target=target)
    same_rows("probe_step", ("features", features), ("target", target))
    check_loss_fn("probe_step", loss_fn)
    check_finite("probe_step", finite, features.shape[0])
    features = prepare_features(features, probe)
    if finite is None:
        finite = finite_rows(features)
    features = torch.where(finite.view(-1, *[1] * (features.dim() - 1)), features, 0)
    logits = probe(features)
    loss, rows = probe_loss(logits, target.detach().to(logits.device), loss_fn, finite=finite)
    return ProbeStep(logits, loss, rows)


def probe_predict(probe: nn.Module, features: Tensor) -> Tensor:
    """The probe's outputs for ``features`` in evaluation mode, without gradients.

    The features are prepared (:func:`prepare_features`), not cleaned: a row with a
    non-finite feature gets non-finite outputs. The mode of the probe (and of each of its
    submodules) is restored after.

    Args:
        probe: The probe module.
        features: ``(N, ...)`` features, rows first.

    Returns:
        ``(N, C)`` detached outputs.

    Raises:
        TypeError: If ``probe`` is not an ``nn.Module`` or ``features`` not a tensor.
        ValueError: If ``features`` is 0-d.

    Example:
        >>> probe = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.9))
        >>> x = torch.ones(4, 2)
        >>> torch.equal(probe_predict(probe, x), probe[0](x).detach()), probe.training
        (True, True)
    """
    check_probe("probe_predict", probe)
    check_tensors("probe_predict", features=features)
    modes = [(module, module.training) for module in probe.modules()]
    probe.eval()
    try:
        with torch.no_grad():
            return probe(prepare_features(features, probe))
    finally:
        for module, training in modes:
            module.training = training
