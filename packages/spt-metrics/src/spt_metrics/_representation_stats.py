"""The sums behind :mod:`spt_metrics.representation`, and the values computed from them.

Every measure is split in two: ``*_stats`` turns one batch of float64 rows into sums that add
up over batches and ranks, and ``*_from_stats`` turns the sums into the value. The functions of
:mod:`spt_metrics.representation` call both on their input; the Metrics of
:mod:`spt_metrics.representation_metrics` keep the sums as ``dist_reduce_fx="sum"`` states and
call ``*_from_stats`` in ``compute``. Input checks shared by both live here too.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from spt_core.checks import positive_int

# An eigenvalue below this multiple of S is rounding noise of float64 sums of size S: it
# counts as 0 (otherwise a collapsed embedding would show a spread of noise directions).
_ROUNDING = 64 * torch.finfo(torch.float64).eps
NAN = float("nan")


def check_positive(value: Any, name: str, owner: str, zero: bool = False) -> float:
    """``value`` as a float, if it is a real number ``> 0`` (``>= 0`` with ``zero``); a
    ``TypeError`` for another type, a ``ValueError`` out of range."""
    allowed = ">= 0" if zero else "> 0"
    message = f"{owner}: {name} must be a finite number {allowed}, got {value!r}"
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(message)
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise ValueError(message)
    return float(value)


def check_energy(energy: Any, owner: str) -> float:
    """``energy`` as a float, if it is in ``(0, 1]``."""
    if check_positive(energy, "energy", owner) > 1:
        raise ValueError(f"{owner}: energy must be in (0, 1], got {energy!r}")
    return float(energy)


def real_tensor(value: Any, owner: str, what: str) -> Tensor:
    """``value`` as a tensor of real numbers (a tensor, an array or nested numbers).

    Raises:
        TypeError: If it cannot become a tensor, or holds complex or bool values.
    """
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, RuntimeError) as error:
        raise TypeError(
            f"{owner}: {what} must be a tensor of real numbers, got {type(value).__name__}"
        ) from error
    if tensor.is_complex() or tensor.dtype == torch.bool:
        raise TypeError(f"{owner}: {what} must hold real numbers, got dtype {tensor.dtype}")
    return tensor


def rows(z: Any, owner: str, what: str = "z", features: int | None = None) -> Tensor:
    """``z`` as a detached float64 ``(rows, features)`` tensor.

    Raises:
        TypeError: If ``z`` is not a tensor of real numbers (see :func:`real_tensor`).
        ValueError: If it is not 2-D, or has no feature or not ``features`` of them.
    """
    z = real_tensor(z, owner, what)
    if z.ndim != 2:
        raise ValueError(
            f"{owner}: {what} must be a real 2-D (rows, features) tensor, got shape "
            f"{tuple(z.shape)} and dtype {z.dtype}"
        )
    if z.shape[1] < 1 or (features is not None and z.shape[1] != features):
        expected = features if features is not None else "at least 1"
        raise ValueError(f"{owner}: {what} has {z.shape[1]} features, expected {expected}")
    return z.detach().to(torch.float64)


def views_tensor(views: Any, more: tuple, owner: str, features: int | None = None) -> Tensor:
    """Views as one float64 ``(samples, views, features)`` tensor.

    Raises:
        TypeError: If a view is not a tensor of real numbers (see :func:`real_tensor`).
        ValueError: If the shapes do not fit together.
    """
    if more:
        parts = [rows(v, owner, f"view {i}", features) for i, v in enumerate((views, *more))]
        if len({p.shape for p in parts}) != 1:
            shapes = [tuple(p.shape) for p in parts]
            raise ValueError(f"{owner}: every view must have the same shape, got {shapes}")
        stacked = torch.stack(parts, dim=1)
    else:
        stacked = real_tensor(views, owner, "views")
        if stacked.ndim != 3:
            raise ValueError(
                f"{owner}: views must be one real (samples, views, features) tensor or several "
                f"(samples, features) tensors, got shape {tuple(stacked.shape)}"
            )
        stacked = stacked.detach().to(torch.float64)
    if stacked.shape[1] < 2:
        raise ValueError(f"{owner}: needs at least 2 views per sample, got {stacked.shape[1]}")
    if stacked.shape[2] < 1 or (features is not None and stacked.shape[2] != features):
        expected = features if features is not None else "at least 1"
        raise ValueError(f"{owner}: views have {stacked.shape[2]} features, expected {expected}")
    return stacked


def same_shape(z1: Tensor, z2: Tensor, owner: str) -> tuple[Tensor, Tensor]:
    """Two views, or a ``ValueError`` when their shapes differ."""
    if z1.shape != z2.shape:
        raise ValueError(
            f"{owner}: z1 and z2 must have the same shape, got {tuple(z1.shape)} and "
            f"{tuple(z2.shape)}"
        )
    return z1, z2


def normalise(z: Tensor) -> Tensor:
    """Rows scaled to unit l2 norm; a zero row stays zero."""
    return z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _floor(eigenvalues: Tensor, scale: Tensor | float) -> Tensor:
    """Clamp eigenvalues at 0 and zero those that the rounding of ``scale``-sized sums hides."""
    eigenvalues = eigenvalues.clamp_min(0)
    return torch.where(eigenvalues > _ROUNDING * scale, eigenvalues, 0.0)


def _entropy_rank(weights: Tensor, eps: float) -> Tensor:
    """``exp`` of the entropy of ``p = weights / sum(weights) + eps`` (with 0 log 0 = 0)."""
    p = weights / weights.sum().clamp_min(torch.finfo(torch.float64).tiny) + eps
    return torch.exp(-torch.special.xlogy(p, p).sum())


def gram_stats(z: Tensor) -> tuple[Tensor, Tensor, int]:
    """``(Z^T Z, sum of rows, rows)`` of float64 rows."""
    return z.T @ z, z.sum(0), len(z)


def rankme_from_stats(gram: Tensor, count: Any, eps: float) -> Tensor:
    n = int(count)
    if n < 1:
        return gram.new_tensor(NAN)
    squared = _floor(torch.linalg.eigvalsh(gram), gram.trace())  # sigma_k^2, ascending
    return _entropy_rank(squared[-min(n, len(gram)) :].sqrt(), eps)  # the min(N, D) of the SVD


def effective_rank_from_stats(gram: Tensor, total: Tensor, count: Any) -> Tensor:
    n = int(count)
    if n < 2:
        return gram.new_tensor(NAN)
    covariance = (gram - torch.outer(total, total) / n) / (n - 1)
    eigenvalues = _floor(torch.linalg.eigvalsh(covariance), gram.trace() / (n - 1))
    return _entropy_rank(eigenvalues, 0.0)


def dims_for_energy_from_stats(gram: Tensor, count: Any, energy: float) -> Tensor:
    if int(count) < 1:
        return gram.new_tensor(NAN)
    squared = _floor(torch.linalg.eigvalsh(gram), gram.trace()).flip(0)  # descending
    cumulative = squared.cumsum(0)
    if cumulative[-1] <= 0:
        return gram.new_tensor(0.0)
    needed = (cumulative < energy * cumulative[-1]).sum() + 1
    return needed.to(torch.float64) / len(squared)


def moment_stats(z: Tensor) -> tuple[Tensor, Tensor, int]:
    """``(sum, sum of squares, rows)`` per dimension of the l2-normalised float64 rows."""
    unit = normalise(z)
    return unit.sum(0), unit.square().sum(0), len(z)


def embedding_std_from_stats(total: Tensor, squares: Tensor, count: Any) -> Tensor:
    n = int(count)
    if n < 2:
        return total.new_tensor(NAN)
    variance = _floor((squares - total.square() / n) / (n - 1), squares / (n - 1))
    return variance.sqrt().mean()


def mean_cosine_from_stats(total: Tensor, squares: Tensor, count: Any) -> Tensor:
    n = int(count)
    if n < 2:
        return total.new_tensor(NAN)
    return (total.square().sum() - squares.sum()) / (n * (n - 1))


def alignment_stats(z1: Tensor, z2: Tensor, alpha: float) -> tuple[Tensor, int]:
    """``(sum of |u1 - u2|^alpha, pairs)`` over l2-normalised float64 positive pairs."""
    return (normalise(z1) - normalise(z2)).norm(dim=1).pow(alpha).sum(), len(z1)


def uniformity_from_rows(units: Tensor, weights: Tensor, t: float, chunk: int = 1024) -> Tensor:
    """``log`` of the weighted mean of ``exp(-t |u_i - u_j|^2)`` over pairs ``i != j``.

    ``units`` are l2-normalised rows (float32 is enough: distances lie in ``[0, 4]``), and
    ``weights`` (float64, 0 or 1) say which rows count; the sum is taken in float64.
    """
    weights = weights.to(torch.float64)
    pairs = weights.sum().square() - weights.square().sum()
    if pairs <= 0:
        return weights.new_tensor(NAN)
    squares = units.square().sum(1)
    total = weights.new_zeros(())
    for start in range(0, len(units), chunk):
        block = units[start : start + chunk]
        distances = squares[start : start + chunk, None] + squares[None] - 2 * block @ units.T
        kernel = torch.exp(-t * distances.clamp_min(0).to(torch.float64))
        kernel = kernel * weights[start : start + chunk, None] * weights[None]
        index = torch.arange(len(block), device=units.device)
        kernel[index, index + start] = 0.0  # i == j
        total = total + kernel.sum()
    return torch.log(total / pairs)


def lidar_stats(views: Tensor) -> tuple[int, Tensor, Tensor, Tensor, int]:
    """``(samples, sum of sample means, their Gram, within-sample scatter, its dof)``."""
    n, q, d = views.shape
    means = views.mean(1)
    deviations = (views - means[:, None]).reshape(n * q, d)
    return n, means.sum(0), means.T @ means, deviations.T @ deviations, n * (q - 1)


def lidar_from_stats(
    count: Any, total: Tensor, gram: Tensor, within: Tensor, dof: Any, delta: float, eps: float
) -> Tensor:
    n, dof = int(count), int(dof)
    if n < 2 or dof < 1:
        return total.new_tensor(NAN)
    between = (gram - torch.outer(total, total) / n) / (n - 1)
    identity = torch.eye(len(total), dtype=total.dtype, device=total.device)
    scale, basis = torch.linalg.eigh(within / dof + delta * identity)
    whiten = basis @ torch.diag(scale.rsqrt()) @ basis.T  # Sigma_w^{-1/2}
    lidar_matrix = whiten @ between @ whiten
    eigenvalues = torch.linalg.eigvalsh((lidar_matrix + lidar_matrix.T) / 2)
    noise = eigenvalues[-1].clamp_min(0) + gram.trace() / (n - 1) / scale[0]
    return _entropy_rank(_floor(eigenvalues, noise), eps)


_COUNTS = ("count", "dof")


class SumStates(Metric):
    """Base of the representation Metrics: fixed-shape sum states (``count``/``dof`` int64).

    Args:
        num_features: The embedding width, checked to be a positive int (``None``: not needed).
        **kwargs: Passed to ``torchmetrics.Metric``.
    """

    is_differentiable = False
    higher_is_better: bool | None = True
    full_state_update = False

    def __init__(self, num_features: int | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_features is not None:
            positive_int(num_features, f"{type(self).__name__}: num_features")
        self.num_features = num_features

    def _sums(self, **shapes: tuple[int, ...]) -> None:
        for name, shape in shapes.items():
            dtype = torch.int64 if name in _COUNTS else torch.float64
            default = torch.zeros(shape, dtype=dtype)
            self.add_state(name, default, dist_reduce_fx="sum", persistent=True)

    def _add(self, **values: Any) -> None:
        for name, value in values.items():
            setattr(self, name, getattr(self, name) + value)
