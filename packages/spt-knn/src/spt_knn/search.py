"""The neighbours that vote: their distances and labels, from one search or several shards."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from spt_core.checks import positive_int
from spt_distance import knn_search
from spt_knn._checks import check_search, two_dimensional


def knn_neighbours(
    queries: Tensor,
    bank: Tensor,
    labels: Tensor,
    k: int,
    distance_metric: str = "euclidean",
    chunk_size: int | None = -1,
) -> tuple[Tensor, Tensor]:
    """Distances and labels of the ``min(k, N)`` nearest bank rows of each query.

    :func:`spt_distance.knn_search` finds them (bf16/fp16 inputs are searched with float32
    accumulation) with ``exact_distances=True``: each distance is computed once, from the two
    rows in float64, so a query's result does not depend on the other queries of its batch
    and results of separate searches merge exactly; neighbours are ordered by
    ``(distance, row)``.

    Args:
        queries: ``(B, D)`` rows.
        bank: ``(N, D)`` rows (``N`` may be 0).
        labels: ``(N,)`` the integer label of each bank row.
        k: Neighbours per query (``>= 0``); clipped to ``N``.
        distance_metric: One of ``spt_distance.METRICS``.
        chunk_size: Bank rows per block of the search; ``-1`` one block, ``None`` automatic.

    Returns:
        ``(distances, labels)``, both ``(B, min(k, N))``, nearest first.

    Raises:
        TypeError: If ``queries``, ``bank`` or ``labels`` is not a tensor, ``labels`` not
            integers, ``k`` or ``chunk_size`` not an int.
        ValueError: If the shapes are not ``(B, D)``, ``(N, D)`` and ``(N,)``, ``k < 0``,
            ``distance_metric`` is unknown or ``chunk_size`` is not ``-1``, ``None`` or
            positive. Only Python values and shapes are read: nothing waits for the device.

    Example:
        >>> d, y = knn_neighbours(
        ...     torch.tensor([[0.0], [5.0]]), torch.tensor([[1.0], [4.0], [9.0]]),
        ...     torch.tensor([7, 8, 9]), k=2,
        ... )
        >>> d.tolist(), y.tolist()
        ([[1.0, 4.0], [1.0, 4.0]], [[7, 8], [8, 7]])
    """
    check_search("knn_neighbours", queries, bank, labels, k, distance_metric, chunk_size)
    k = min(k, bank.shape[0])
    if k == 0:
        empty = torch.empty((queries.shape[0], 0), device=queries.device)
        return empty, empty.long()
    # No cast here: knn_search upcasts a tile of the bank at a time (no copy of the bank).
    distances, indices = knn_search(
        queries, bank, k, metric=distance_metric, chunk_size=chunk_size, exact_distances=True
    )
    return distances, labels[indices]


def pad_candidates(distances: Tensor, labels: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Pad ``(B, j)`` candidates to ``(B, k)`` with infinite distances and label ``-1``.

    Example:
        >>> d, y = pad_candidates(torch.tensor([[0.5]]), torch.tensor([[3]]), 3)
        >>> d.tolist(), y.tolist()
        ([[0.5, inf, inf]], [[3, -1, -1]])
    """
    missing = k - distances.shape[1]
    if missing <= 0:
        return distances, labels
    batch = distances.shape[0]
    filler = distances.new_full((batch, missing), math.inf)
    return (
        torch.cat((distances, filler), dim=1),
        torch.cat((labels, labels.new_full((batch, missing), -1)), dim=1),
    )


def merge_candidates(
    distances: Tensor, labels: Tensor, k: int, keys: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The ``k`` nearest of several shards' candidate lists, concatenated shard by shard.

    Each shard's list must be sorted nearest first, with ties in row order (as
    :func:`knn_neighbours` returns them). The sort is stable, so equal distances keep the
    earlier shard and then the earlier row: the order ``(distance, global row)`` of one
    search over the shards concatenated in the same order. With ``keys`` (each candidate's
    row in a whole bank whose rows the shards hold in another order) the order is
    ``(distance, key)``: that of one search over the whole bank.

    Args:
        distances: ``(B, S * j)`` candidate distances, shard-major.
        labels: ``(B, S * j)`` their labels.
        k: How many to keep, ``0 <= k <= S * j``.
        keys: ``(B, S * j)`` distinct integer keys of the candidates, or ``None``.

    Returns:
        ``(distances, labels)`` of shape ``(B, k)``, nearest first.

    Raises:
        TypeError: If ``distances``, ``labels`` or ``keys`` is not a tensor, ``keys`` not
            integers or ``k`` not an int.
        ValueError: If ``distances`` is not 2-D, ``labels`` or ``keys`` not of its shape, or
            ``k`` is negative or above ``S * j`` (shapes only: nothing waits for the device).

    Example:
        >>> d = torch.tensor([[0.1, 0.7, 0.3, 0.7]])  # shard 0: 0.1, 0.7; shard 1: 0.3, 0.7
        >>> y = torch.tensor([[1, 2, 3, 4]])
        >>> merge_candidates(d, y, 3)[1].tolist()
        [[1, 3, 2]]
    """
    _check_candidates(distances, labels, k, keys)
    if keys is not None:
        by_key = torch.sort(keys, dim=1, stable=True).indices
        distances, labels = distances.gather(1, by_key), labels.gather(1, by_key)
    order = torch.sort(distances, dim=1, stable=True).indices[:, :k]
    return distances.gather(1, order), labels.gather(1, order)


def _check_candidates(distances: object, labels: object, k: object, keys: object) -> None:
    shape = two_dimensional(distances, "merge_candidates: distances").shape
    for argument, value in (("labels", labels), ("keys", keys)):
        if value is None and argument == "keys":
            continue
        if not isinstance(value, Tensor):
            raise TypeError(
                f"merge_candidates: {argument} must be a torch.Tensor, got {type(value).__name__}"
            )
        if argument == "keys" and (value.is_floating_point() or value.is_complex()):
            raise TypeError(f"merge_candidates: keys must be an integer tensor, got {value.dtype}")
        if value.shape != shape:
            raise ValueError(
                f"merge_candidates: {argument} must have the shape of distances {tuple(shape)}, "
                f"got {tuple(value.shape)}"
            )
    positive_int(k, "merge_candidates: k", minimum=0)
    if k > shape[1]:
        raise ValueError(
            f"merge_candidates: k must be at most the {shape[1]} candidates per row, got {k}"
        )
