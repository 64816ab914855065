"""kNN over a bank split across ranks: each rank searches its own shard for every query.

Instead of gathering every rank's bank (``W x N x D`` per rank), the queries of all ranks
are gathered (``W x B x D``), each rank finds the ``k`` nearest rows of its shard for each of
them, and each query's owner merges the ``W x k`` candidates (distance and label) it gets
back. The merge keeps the result of a search over the concatenated bank, ties included.

The search runs in collective rounds: one per validation batch when every rank runs the
same batches, or, when ranks hold different numbers of queries (or none), as many as the
largest needs, agreed on first (:func:`sharded_neighbours_uneven`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from spt_core import distributed
from spt_knn.functional import search_neighbours


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


def merge_candidates(distances: Tensor, labels: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` nearest of several shards' candidate lists, concatenated shard by shard.

    Each shard's list must be sorted nearest first, with ties in row order (as
    :func:`spt_distance.knn_search` returns them). The sort is stable, so equal distances
    keep the earlier shard and then the earlier row: the order ``(distance, global row)`` of
    one search over the shards concatenated in the same order.

    Args:
        distances: ``(B, S * j)`` candidate distances, shard-major.
        labels: ``(B, S * j)`` their labels.
        k: How many to keep (at most ``S * j``).

    Returns:
        ``(distances, labels)`` of shape ``(B, k)``, nearest first.

    Example:
        >>> d = torch.tensor([[0.1, 0.7, 0.3, 0.7]])  # shard 0: 0.1, 0.7; shard 1: 0.3, 0.7
        >>> y = torch.tensor([[1, 2, 3, 4]])
        >>> merge_candidates(d, y, 3)[1].tolist()
        [[1, 3, 2]]
    """
    order = torch.sort(distances, dim=1, stable=True).indices[:, :k]
    return distances.gather(1, order), labels.gather(1, order)


def _gather_rows(tensor: Tensor) -> Tensor:
    """All ranks' equally shaped tensors, concatenated in rank order (no host sync)."""
    wire = tensor
    if dist.get_backend() == "gloo" and tensor.dtype in (torch.float16, torch.bfloat16):
        wire = tensor.float()  # gloo has no 16-bit float collectives
    slots = [torch.empty_like(wire) for _ in range(distributed.world_size())]
    dist.all_gather(slots, wire.contiguous())
    return torch.cat(slots).to(tensor.dtype)


def _round(
    queries: Tensor,
    shard: Tensor,
    shard_labels: Tensor,
    k: int,
    rows: int,
    distance_metric: str,
    chunk_size: int | None,
) -> tuple[Tensor, Tensor]:
    """One collective round: every rank sends ``rows`` query rows (its own ``B <= rows``,
    zero-padded) and gets back the ``k`` nearest rows over all shards of its own."""
    world = distributed.world_size()
    batch, dim = queries.shape
    padded = queries.new_zeros((rows, dim))
    padded[:batch] = queries
    everyone = _gather_rows(padded)
    found = search_neighbours(everyone, shard, shard_labels, k, distance_metric, chunk_size)
    distances, labels = pad_candidates(*found, k)
    # One message: fp32 distances beside int32 labels carried bit for bit as fp32.
    packed = torch.stack((distances.float(), labels.to(torch.int32).view(torch.float32)), dim=-1)
    received = torch.empty_like(packed)
    dist.all_to_all_single(received, packed)  # block r of rows goes to rank r
    received = received.view(world, rows, k, 2).transpose(0, 1).reshape(rows, world * k, 2)
    merged_d = received[..., 0]
    merged_y = received[..., 1].contiguous().view(torch.int32).long()
    distances, labels = merge_candidates(merged_d, merged_y, k)
    return distances[:batch], labels[:batch]


def sharded_neighbours(
    queries: Tensor,
    shard: Tensor,
    shard_labels: Tensor,
    k: int,
    rows: int,
    distance_metric: str = "euclidean",
    chunk_size: int | None = -1,
) -> tuple[Tensor, Tensor]:
    """The ``k`` nearest rows, over every rank's shard, of this rank's queries.

    One call is one collective round: every rank must call it together (as many times as
    the others), with the same ``k``, ``rows``, query dtype and feature count. When ranks
    hold different numbers of queries, use :func:`sharded_neighbours_uneven`. Without a
    process group it is a plain search of the local shard.

    Args:
        queries: ``(B, D)`` this rank's queries, ``B <= rows``.
        shard: ``(N_rank, D)`` this rank's labelled bank rows (``N_rank`` may be 0).
        shard_labels: ``(N_rank,)`` their labels.
        k: Neighbours per query, at most the total number of rows over all shards.
        rows: Query rows every rank sends (this rank's are zero-padded up to it); the same
            on every rank, so no host sync is needed to agree on shapes.
        distance_metric: See :func:`spt_distance.knn_search`.
        chunk_size: See :func:`spt_distance.knn_search`.

    Returns:
        ``(distances, labels)`` of shape ``(B, k)``, nearest first; ties go to the lower
        rank, then to the older row, as in one search over the gathered bank.

    Raises:
        ValueError: If ``B > rows``.
    """
    if not distributed.is_distributed():
        found = search_neighbours(queries, shard, shard_labels, k, distance_metric, chunk_size)
        return pad_candidates(*found, k)
    if queries.shape[0] > rows:
        raise ValueError(
            f"sharded kNN: a batch of {queries.shape[0]} query rows exceeds the {rows} rows "
            "that every rank sends per round"
        )
    return _round(queries, shard, shard_labels, k, rows, distance_metric, chunk_size)


QUERY_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
"""Query dtypes that rounds carry, in the order in which the ranks' choices are reconciled."""


def agree_on_rounds(queries: Tensor | None, rows: int, device: torch.device) -> RoundShape:
    """The shape of the rounds every rank runs for its queries (``None``: none).

    One small gather and one host sync. ``rows`` is this rank's wish for the rows per round
    (its largest batch); the ranks take the largest wish.
    """
    if queries is None:
        mine = [0, rows, -1, -1]
    else:
        dtype = queries.dtype if queries.dtype in QUERY_DTYPES else torch.float32
        mine = [queries.shape[0], rows, queries.shape[1], QUERY_DTYPES.index(dtype)]
    per_rank = distributed.gather_uneven(torch.tensor([mine], device=device)).tolist()
    code = max(r[3] for r in per_rank)
    return RoundShape(
        queries=max(r[0] for r in per_rank),
        rows=max(1, *(r[1] for r in per_rank)),
        dim=max(0, *(r[2] for r in per_rank)),
        dtype=QUERY_DTYPES[code] if code >= 0 else torch.float32,
    )


@dataclass(frozen=True)
class RoundShape:
    """What every rank agrees on before a series of :func:`sharded_neighbours` rounds."""

    queries: int
    """The most query rows any rank holds."""
    rows: int
    """Query rows per rank and round."""
    dim: int
    dtype: torch.dtype
    """Features and dtype of the query rows on the wire."""

    @property
    def rounds(self) -> int:
        return -(-self.queries // self.rows)


def sharded_neighbours_uneven(
    queries: Tensor | None,
    shard: Tensor,
    shard_labels: Tensor,
    k: int,
    rows: int,
    distance_metric: str = "euclidean",
    chunk_size: int | None = -1,
) -> tuple[Tensor, Tensor]:
    """:func:`sharded_neighbours` for ranks that hold different numbers of queries, or none.

    Every rank calls it once, together: the ranks first agree on the number of rounds (one
    small gather, one host sync), then run them, each rank sending its next ``rows`` queries
    (none once its own are done).

    Args:
        queries: ``(B_rank, D)`` this rank's queries, or ``None`` when it has none.
        shard, shard_labels, k, distance_metric, chunk_size: As for
            :func:`sharded_neighbours`.
        rows: This rank's wish for the query rows per round; the largest wish wins.

    Returns:
        ``(distances, labels)`` of shape ``(B_rank, k)`` (``(0, k)`` for ``None``).
    """
    if not distributed.is_distributed():
        queries = shard.new_zeros((0, shard.shape[1])) if queries is None else queries
        return sharded_neighbours(queries, shard, shard_labels, k, 1, distance_metric, chunk_size)
    shape = agree_on_rounds(queries, rows, shard.device)
    if queries is None:
        queries = torch.zeros((0, shape.dim), dtype=shape.dtype, device=shard.device)
    queries = queries.to(shape.dtype)
    parts = [
        _round(
            queries[i * shape.rows : (i + 1) * shape.rows], shard, shard_labels, k,
            shape.rows, distance_metric, chunk_size,
        )
        for i in range(shape.rounds)
    ]  # fmt: skip
    if not parts:  # no rank holds a query
        nothing = torch.empty((0, 0), device=shard.device)
        return pad_candidates(nothing, nothing.long(), k)
    return torch.cat([d for d, _ in parts]), torch.cat([y for _, y in parts])
