"""kNN over a bank split across ranks: each rank searches its own shard for every query.

Instead of gathering every rank's bank (``W x N x D`` per rank), the queries of all ranks
are gathered (``W x B x D``), each rank finds the ``k`` nearest rows of its shard for each of
them, and each query's owner merges the ``W x k`` candidates (distance and label) it gets
back. The merge keeps the result of a search over the concatenated bank, ties included.

The search runs in collective rounds of a shape every rank agrees on first
(:func:`agree_on_rounds`): one round per validation batch when every rank runs the same
batches, or, when ranks hold different numbers of queries (or none), as many as the largest
needs (:meth:`RoundShape.parts` cuts a rank's queries into them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from spt_core import distributed
from spt_core.checks import positive_int
from spt_knn._checks import check_search, integer_rows, two_dimensional
from spt_knn.search import knn_neighbours, merge_candidates, pad_candidates


def _round(
    queries: Tensor,
    shard: Tensor,
    shard_labels: Tensor,
    k: int,
    rows: int,
    distance_metric: str,
    chunk_size: int | None,
    shard_keys: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """One collective round: every rank sends ``rows`` query rows (its own ``B <= rows``,
    zero-padded) and gets back the ``k`` nearest rows over all shards of its own."""
    world = distributed.world_size()
    batch, dim = queries.shape
    padded = queries.new_zeros((rows, dim))
    padded[:batch] = queries
    everyone = distributed.gather_equal(padded)
    if shard_keys is None:
        found = knn_neighbours(everyone, shard, shard_labels, k, distance_metric, chunk_size)
        columns = pad_candidates(*found, k)
    else:
        which = torch.arange(shard.shape[0], device=shard.device)
        found = knn_neighbours(everyone, shard, which, k, distance_metric, chunk_size)
        distances, which = pad_candidates(*found, k)  # padding: row -1
        if shard.shape[0]:
            row = which.clamp(min=0)
            columns = (distances, torch.where(which >= 0, shard_labels[row], -1), shard_keys[row])
        else:  # every candidate is padding
            columns = (distances, which, which)
    # One message: fp32 distances beside int32 labels (and keys) carried bit for bit as fp32.
    ints = [column.to(torch.int32).view(torch.float32) for column in columns[1:]]
    packed = torch.stack((columns[0].float(), *ints), dim=-1)
    width = packed.shape[-1]
    received = distributed.exchange(packed)  # block r of rows goes to rank r
    received = received.view(world, rows, k, width).transpose(0, 1).reshape(rows, world * k, width)
    merged_d = received[..., 0]
    merged_y = received[..., 1].contiguous().view(torch.int32).long()
    keys = received[..., 2].contiguous().view(torch.int32) if width == 3 else None
    distances, labels = merge_candidates(merged_d, merged_y, k, keys)
    return distances[:batch], labels[:batch]


def sharded_neighbours(
    queries: Tensor, shard: Tensor, shard_labels: Tensor, k: int, rows: int,
    distance_metric: str = "euclidean", chunk_size: int | None = -1, *,
    shard_keys: Tensor | None = None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The ``k`` nearest rows, over every rank's shard, of this rank's queries.

    One call is one collective round: every rank must call it together (as many times as
    the others), with the same ``k``, ``rows``, query dtype and feature count: the shape
    that :func:`agree_on_rounds` settles. Without a process group it is a plain search of the
    local shard.

    Args:
        queries: ``(B, D)`` this rank's queries, ``B <= rows``.
        shard: ``(N_rank, D)`` this rank's labelled bank rows (``N_rank`` may be 0).
        shard_labels: ``(N_rank,)`` their integer labels.
        k: Neighbours per query (``>= 0``), at most the total number of rows over all shards.
        rows: Query rows (``>= 1``) every rank sends (this rank's are zero-padded up to it);
            the same on every rank, so no host sync is needed to agree on shapes.
        distance_metric: See :func:`knn_neighbours`.
        chunk_size: See :func:`knn_neighbours`.
        shard_keys: ``(N_rank,)`` each shard row's position in the whole bank (below
            ``2**31``, distinct over the ranks), when the ranks do not hold the bank in rank
            order (a clean loader's batches ``r, r + W, ...``); every rank passes them or none.

    Returns:
        ``(distances, labels)`` of shape ``(B, k)``, nearest first; ties go to the lower
        rank, then to the older row, as in one search over the gathered bank (with
        ``shard_keys``, to the lower key: one search over the bank in key order).

    Raises:
        TypeError: If a tensor argument is not a tensor, the labels or keys are not integers,
            ``k``, ``rows`` or ``chunk_size`` not an int.
        ValueError: If ``B > rows``, the shapes are not ``(B, D)``, ``(N_rank, D)`` and
            ``(N_rank,)``, ``k < 0``, ``rows < 1``, or ``distance_metric`` or ``chunk_size`` is
            not allowed (see :func:`knn_neighbours`). Only Python values and shapes are read:
            nothing waits for the device.

    Example:
        Without a process group, one rank's shard is the whole bank:

        >>> shard, shard_labels = torch.tensor([[0.0], [1.0], [3.0]]), torch.tensor([0, 1, 2])
        >>> queries = torch.tensor([[0.2], [2.6]])
        >>> distances, labels = sharded_neighbours(queries, shard, shard_labels, k=2, rows=4)
        >>> distances.shape, labels.tolist()
        (torch.Size([2, 2]), [[0, 1], [2, 1]])
    """
    names = ("queries", "shard", "shard_labels")
    check_search(
        "sharded_neighbours", queries, shard, shard_labels, k, distance_metric, chunk_size, names
    )
    positive_int(rows, "sharded_neighbours: rows")
    if shard_keys is not None:
        integer_rows(shard_keys, shard.shape[0], "sharded_neighbours: shard_keys", "shard")
    if queries.shape[0] > rows:
        raise ValueError(
            f"sharded_neighbours: a batch of {queries.shape[0]} query rows exceeds the "
            f"rows={rows} that every rank sends per round"
        )
    if not distributed.is_distributed():
        found = knn_neighbours(queries, shard, shard_labels, k, distance_metric, chunk_size)
        return pad_candidates(*found, k)
    return _round(queries, shard, shard_labels, k, rows, distance_metric, chunk_size, shard_keys)


QUERY_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
"""Query dtypes that rounds carry, in the order in which the ranks' choices are reconciled."""


def agree_on_rounds(queries: Tensor | None, rows: int, device: torch.device) -> RoundShape:
    """The shape of the rounds every rank runs for its queries (``None``: none).

    One small gather and one host sync. Every rank must call it together.

    Args:
        queries: ``(B, D)`` this rank's queries, or ``None`` for a rank that holds none.
        rows: This rank's wish for the rows per round (its largest batch, ``>= 0``); the
            ranks take the largest wish (at least 1).
        device: Where the gather runs (the process group's device).

    Returns:
        The :class:`RoundShape`: the most queries any rank holds, the rows per round, the
        feature count and the widest query dtype of :data:`QUERY_DTYPES` (float32 for another
        dtype or when no rank holds queries).

    Raises:
        TypeError: If ``queries`` is neither a tensor nor ``None``, or ``rows`` not an int.
        ValueError: If ``queries`` is not 2-D or ``rows`` is negative.

    Example:
        >>> shape = agree_on_rounds(torch.zeros(5, 3), rows=2, device=torch.device("cpu"))
        >>> shape
        RoundShape(queries=5, rows=2, dim=3, dtype=torch.float32)
        >>> shape.rounds, [len(part) for part in shape.parts(torch.zeros(5, 3), "cpu")]
        (3, [2, 2, 1])
    """
    if queries is not None:
        two_dimensional(queries, "agree_on_rounds: queries")
    positive_int(rows, "agree_on_rounds: rows", minimum=0)
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
    """What every rank agrees on before a series of :func:`sharded_neighbours` rounds, made
    by :func:`agree_on_rounds`.

    Args:
        queries: The most query rows any rank holds.
        rows: Query rows per rank and round.
        dim: Features of the query rows.
        dtype: dtype of the query rows on the wire.

    Example:
        >>> shape = RoundShape(queries=0, rows=4, dim=2, dtype=torch.float32)
        >>> shape.rounds, shape.parts(None, torch.device("cpu"))
        (0, [])
        >>> [len(part) for part in RoundShape(9, 4, 2, torch.float32).parts(None, "cpu")]
        [0, 0, 0]
    """

    queries: int
    rows: int
    dim: int
    dtype: torch.dtype

    @property
    def rounds(self) -> int:
        """Rounds every rank runs: enough for the most queries any rank holds."""
        return -(-self.queries // self.rows)

    def parts(self, queries: Tensor | None, device: torch.device) -> list[Tensor]:
        """This rank's ``queries`` (``None``: none) cut into the :attr:`rounds` it sends, in
        the wire dtype; the parts after its last query are empty."""
        if queries is None:
            queries = torch.zeros((0, self.dim), dtype=self.dtype, device=device)
        queries = queries.to(self.dtype)
        return [queries[i * self.rows : (i + 1) * self.rows] for i in range(self.rounds)]
