"""Comparable frames: the input whitening of the map and the alignment of a map to a reference.

A map is only defined up to a rotation, a reflection and a translation (the loss and every
faithfulness score ignore them). :func:`align_map` picks the one that brings a new map closest
to a reference (orthogonal Procrustes), so that consecutive frames can be compared.
"""

from __future__ import annotations

import torch
from torch import Tensor

from spt_latentviz._checks import as_rows, positive_number

__all__ = ["align_map", "alignment", "feature_scaling", "principal_components", "scaling_from_sums"]


def feature_scaling(rows: Tensor, floor: float = 0.1) -> tuple[Tensor, Tensor]:
    """The centre and the linear map that whiten ``rows``: ``(rows - centre) @ transform``
    has unit variance along each principal direction of ``rows``.

    A direction whose standard deviation is below ``floor`` times the largest one is scaled as
    if it had that much (noise is not blown up). The map is linear and invertible: a first
    ``nn.Linear`` could absorb it, so it changes only how well conditioned the projection's
    training is, not what the projection can draw.

    Args:
        rows: Points, shape ``(N, D)`` with ``N >= 1``.
        floor: Smallest standard deviation whitened, relative to the largest
            (``0 < floor <= 1``).

    Returns:
        ``centre`` (shape ``(D,)``) and ``transform`` (``(D, D)``), in ``rows``'s dtype; the
        identity when the rows coincide.

    Raises:
        TypeError: If ``rows`` is not a tensor or ``floor`` not a number.
        ValueError: If ``rows`` is not ``(N, D)`` with ``N >= 1`` or ``floor`` is not in
            ``(0, 1]``.

    Example:
        >>> rows = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [2.0, 4.0]])
        >>> centre, transform = feature_scaling(rows)
        >>> centre.tolist(), ((rows - centre) @ transform).var(0, unbiased=False).tolist()
        ([1.0, 2.0], [1.0, 1.0])
    """
    rows = as_rows(rows, "feature_scaling: rows", min_rows=1)
    positive_number(floor, "feature_scaling: floor", at_most=1.0)
    moments = rows.sum(dim=0), rows.T @ rows, torch.tensor(float(len(rows)), device=rows.device)
    return scaling_from_sums(*moments, floor=floor)


def scaling_from_sums(
    total: Tensor, outer: Tensor, count: Tensor, floor: float = 0.1
) -> tuple[Tensor, Tensor]:
    """:func:`feature_scaling` from the rows' sum ``(D,)``, the sum of their outer products
    ``(D, D)`` and their count (sums that ranks can add up); the three may share any positive
    factor.

    Args:
        total: ``(D,)`` floating sum of the rows.
        outer: ``(D, D)`` floating sum of their outer products.
        count: How many rows, a number or a one-element tensor.
        floor: As for :func:`feature_scaling`.

    Raises:
        TypeError: If ``total`` or ``outer`` is not a floating tensor, ``count`` neither a
            number nor a tensor, or ``floor`` not a number.
        ValueError: If the shapes are not ``(D,)``, ``(D, D)`` and one value, or ``floor`` is
            not in ``(0, 1]``.

    Example:
        >>> rows = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [2.0, 4.0]])
        >>> scaling_from_sums(rows.sum(0), rows.T @ rows, 4)[0].tolist()
        [1.0, 2.0]
    """
    _check_sums(total, outer, count)
    positive_number(floor, "scaling_from_sums: floor", at_most=1.0)
    count = torch.as_tensor(count, device=total.device)
    work = torch.float64
    count = count.to(work).clamp(min=1e-300)
    centre = total.to(work) / count
    covariance = outer.to(work) / count - torch.outer(centre, centre)
    variances, directions = torch.linalg.eigh((covariance + covariance.T) / 2)
    deviations = variances.clamp(min=0).sqrt()
    largest = deviations.max()
    if largest <= 1e-12:
        transform = torch.eye(len(centre), dtype=work, device=centre.device)
    else:
        transform = directions / deviations.clamp(min=floor * largest)
    return centre.to(total.dtype), transform.to(total.dtype)


def principal_components(rows: Tensor) -> Tensor:
    """The rows' coordinates along their two principal directions, scaled so that the first
    has unit standard deviation (a starting map).

    Raises:
        TypeError: If ``rows`` is not a tensor.
        ValueError: If ``rows`` is not ``(N, D)`` with ``N >= 1``.

    Example:
        >>> rows = torch.tensor([[0.0, 0.0, 1.0], [4.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
        >>> principal_components(rows).shape
        torch.Size([3, 2])
    """
    rows = as_rows(rows, "principal_components: rows", min_rows=1)
    centred = rows - rows.mean(dim=0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    components = centred @ vh[:2].T
    if components.shape[1] < 2:
        components = torch.cat([components, torch.zeros_like(components)], dim=1)
    scale = components[:, 0].std(correction=0)
    return components / torch.where(scale > 1e-12, scale, torch.ones_like(scale))


def alignment(z: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
    """The rotation or reflection ``R`` and shift ``t`` for which ``z @ R + t`` is closest to
    ``reference`` (least squares; orthogonal Procrustes on the centred points).

    Args:
        z: A map, shape ``(N, d)``.
        reference: The map to align to, same shape (the same rows, in the same order).

    Returns:
        ``R`` (``(d, d)``, orthogonal) and ``t`` (``(d,)``), in ``z``'s dtype.

    Raises:
        TypeError: If ``z`` or ``reference`` is not a tensor.
        ValueError: If the shapes differ or hold no row.

    Example:
        >>> z = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
        >>> turned = z @ torch.tensor([[0.0, 1.0], [-1.0, 0.0]]) + 5.0
        >>> rotation, shift = alignment(turned, z)
        >>> torch.allclose(turned @ rotation + shift, z, atol=1e-5)
        True
    """
    z, reference = as_rows(z, "z", min_rows=1), as_rows(reference, "reference", min_rows=1)
    if z.shape != reference.shape:
        raise ValueError(
            f"z and reference must have the same shape, got {tuple(z.shape)} and "
            f"{tuple(reference.shape)}"
        )
    source, target = z.double(), reference.to(z.device, torch.float64)
    source_mean, target_mean = source.mean(dim=0), target.mean(dim=0)
    u, _, vh = torch.linalg.svd((source - source_mean).T @ (target - target_mean))
    rotation = u @ vh
    shift = target_mean - source_mean @ rotation
    return rotation.to(z.dtype), shift.to(z.dtype)


def align_map(z: Tensor, reference: Tensor) -> Tensor:
    """``z`` rotated or reflected and shifted onto ``reference`` (see :func:`alignment`).

    Every distance within ``z`` is kept, so are its faithfulness scores.

    Args:
        z: A map, shape ``(N, d)``.
        reference: The map to align to, same shape (the same rows, in the same order).

    Returns:
        The aligned map, shape ``(N, d)``, in ``z``'s dtype.

    Raises:
        TypeError: If ``z`` or ``reference`` is not a tensor.
        ValueError: If the shapes differ or hold no row.

    Example:
        >>> z = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
        >>> mirrored = z * torch.tensor([-1.0, 1.0]) - 3.0
        >>> torch.allclose(align_map(mirrored, z), z, atol=1e-5)
        True
    """
    rotation, shift = alignment(z, reference)
    return z @ rotation + shift


def _check_sums(total: object, outer: object, count: object) -> None:
    for argument, value in (("total", total), ("outer", outer)):
        if not isinstance(value, Tensor) or not value.is_floating_point():
            raise TypeError(
                f"scaling_from_sums: {argument} must be a floating-point tensor, got {value!r}"
            )
    if total.dim() != 1 or not total.shape[0] or outer.shape != (len(total), len(total)):
        raise ValueError(
            "scaling_from_sums: total and outer must have shapes (D,) and (D, D), D >= 1, got "
            f"{tuple(total.shape)} and {tuple(outer.shape)}"
        )
    if isinstance(count, bool) or not isinstance(count, (int, float, Tensor)):
        raise TypeError(f"scaling_from_sums: count must be a number or a tensor, got {count!r}")
    if isinstance(count, Tensor) and count.numel() != 1:
        raise ValueError(
            f"scaling_from_sums: count must hold one value, got shape {tuple(count.shape)}"
        )
