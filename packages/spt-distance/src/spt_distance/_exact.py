"""Distances recomputed from the rows' differences in float64: exact for the few pairs that
are returned, and where the matrix-product expansion of the scores cancels."""

from __future__ import annotations

import torch
from torch import Tensor

EUCLIDEAN = ("euclidean", "squared_euclidean")


def exact_distances(
    left: Tensor, left_index: Tensor, right: Tensor, right_index: Tensor, metric: str
) -> Tensor:
    """Distance of rows ``left[left_index]`` and ``right[right_index]``, pair by pair, from
    their differences in float64: at most 20 bytes per (pair, feature) at once.

    Squared distance for the euclidean metrics, ``|u/|u| - v/|v||^2 / 2`` for cosine
    (1 when either row is zero).
    """
    a = left.index_select(0, left_index).double()
    b = right.index_select(0, right_index).double()
    if metric == "cosine":
        norm_a, norm_b = torch.linalg.vector_norm(a, dim=1), torch.linalg.vector_norm(b, dim=1)
        nonzero = (norm_a > 0) & (norm_b > 0)
        a.div_(torch.where(nonzero, norm_a, 1).unsqueeze(1))
        b.div_(torch.where(nonzero, norm_b, 1).unsqueeze(1))
        half_sq = a.sub_(b).square_().sum(dim=1) / 2
        return torch.where(nonzero, half_sq, torch.ones_like(half_sq))
    difference = a.sub_(b)
    if metric in EUCLIDEAN:
        return difference.square_().sum(dim=1)
    return difference.abs_().sum(dim=1)


def exact_metric(queries: Tensor, keys: Tensor, index: Tensor, metric: str) -> Tensor:
    """The metric's distance of each (query row, ``index``) pair, in float64 from
    `exact_rows` (the square root of euclidean taken in float64 too), so that rounding it to
    the output dtype is the only rounding after the float64 arithmetic."""
    values = exact_rows(queries, keys, index, metric)
    if metric == "cosine":
        return values.clamp_(0, 2)
    return values.sqrt_() if metric == "euclidean" else values


def exact_rows(queries: Tensor, keys: Tensor, index: Tensor, metric: str) -> Tensor:
    """Distance of query row ``r`` to each key ``index[r, c]``, as ``(R, C)`` float64, from
    the differences: the same arithmetic, bit for bit, as `exact_distances` on each pair.

    Each query row is converted once and broadcast against its keys instead of gathered
    once per pair: at most 12 bytes per (pair, feature) at once.
    """
    rows, columns = index.shape
    picked = keys.index_select(0, index.reshape(-1)).view(rows, columns, keys.shape[1])
    a = picked.double()
    b = queries.double().unsqueeze(1)
    if metric == "cosine":
        norm_a = torch.linalg.vector_norm(a, dim=2, keepdim=True)
        norm_b = torch.linalg.vector_norm(b, dim=2, keepdim=True)
        a.div_(torch.where(norm_a > 0, norm_a, 1))
        b = b / torch.where(norm_b > 0, norm_b, 1)
        half_sq = a.sub_(b).square_().sum(dim=2) / 2
        nonzero = ((norm_a > 0) & (norm_b > 0)).squeeze(2)
        return torch.where(nonzero, half_sq, torch.ones_like(half_sq))
    difference = a.sub_(b)
    if metric in EUCLIDEAN:
        return difference.square_().sum(dim=2)
    return difference.abs_().sum(dim=2)
