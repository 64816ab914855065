"""Exact k-nearest-neighbour search that streams over chunks of keys."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from spt_distance import _plan, _scores
from spt_distance._checks import (
    check_chunk_size,
    check_k,
    check_memory_budget,
    check_metric,
    check_pair,
    compute_dtype,
)
from spt_distance._exact import exact_metric
from spt_distance._plan import ChunkPlan, plan_chunks
from spt_distance._select import Block, drop_kth_plus_one, scan

__all__ = ["ChunkPlan", "knn_search", "plan_chunks"]


def knn_search(
    queries: Tensor, keys: Tensor, k: int, metric: str = "euclidean",
    chunk_size: int | None = None, *, memory_budget: int | None = None,
    exact_distances: bool = False,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The ``k`` nearest keys of every query, exactly, streaming over chunks of keys.

    Each step scores one chunk of keys against the queries with matrix products (see
    :func:`pairwise_distances` for the metrics), keeps that chunk's ``k + 1`` best and
    merges them into the running best; extra memory is O(B * chunk + B * k) whatever the
    number of keys. Keys are ranked by a score that orders them as the distance does
    (``|x - c|^2 - 2 <q - c, x - c>`` for the euclidean metrics, ``-cos`` for cosine); keys
    with equal scores are ranked by index, smaller first. The centre ``c`` (0 for keys near
    the origin, else a per-feature median of sampled keys) leaves the distances unchanged and
    keeps the float32 scores exact for rows that share a large offset. Every score comes
    from a matrix product of the same shape whatever the chunking, so the result is the same
    for every ``chunk_size``, bit for bit (the query blocks, and so the last bits of a
    score, depend only on ``B`` and ``memory_budget``). The returned rows are sorted by
    (distance, index).
    Distances that the matrix-product expansion cannot resolve from 0 are recomputed from
    the differences, so identical rows give exactly 0; among keys closer to a query than
    that rounding error, the choice follows the rounded score.

    float16/bfloat16 inputs are upcast one tile at a time and give exactly the result of
    the float32 search on the upcast values; float64 inputs are searched in float64. On
    the CPU a tie at the k-th place is found from the ``k + 1`` lowest scores and settled
    by a second pass over the keys, run only when there is one. Off the CPU the search
    never waits for the device: candidates are ranked by a single (score, index) key, and
    every returned pair is recomputed where the CPU recomputes only those near 0 (float64
    inputs keep one host sync, to detect a tie). Non-finite inputs give unspecified
    neighbours.

    Args:
        queries: ``(B, d)`` floating-point tensor.
        keys: ``(N, d)`` floating-point tensor on the same device.
        k: Number of neighbours, ``1 <= k <= N``.
        metric: One of :data:`spt_distance.METRICS`.
        chunk_size: Keys scored per step: ``None`` picks the largest chunk whose scratch
            memory fits ``memory_budget`` (with at most 30 MiB of scores); ``-1`` scores
            every key in one block; a positive int is rounded up to a multiple of the tile
            (1024 keys, :attr:`ChunkPlan.tile`), at most ``N``.
        memory_budget: Scratch bytes that ``chunk_size=None`` plans for, also the bound
            under which queries are split into blocks (default
            :data:`spt_distance.DEFAULT_MEMORY_BUDGET`, 64 MiB).
        exact_distances: Recompute the distance of every returned pair from the two rows'
            differences in float64, rounded once to the output dtype, and sort by it: a
            pair's distance then depends on the two rows only (not on the other queries, the
            chunking or the device), so the results of separate searches (batches, shards of
            the keys) compare and merge exactly. The neighbours chosen are the same.

    Returns:
        ``(distances, indices)``, each ``(B, k)``, nearest first: float32 distances
        (float64 for float64 inputs) and int64 row indices into ``keys``.

    Raises:
        ValueError: Unknown ``metric``; ``k`` outside ``[1, N]``; inputs that are not 2D, with
            different feature counts or devices; ``chunk_size`` 0 or below -1;
            ``memory_budget`` below 1.
        TypeError: Non-floating-point inputs; non-int ``k``, ``chunk_size`` or
            ``memory_budget``.

    Example:
        >>> keys = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
        >>> distances, indices = knn_search(torch.tensor([[1.0, 0.0]]), keys, k=3)
        >>> distances
        tensor([[0., 0., 1.]])
        >>> indices
        tensor([[1, 3, 0]])
        >>> knn_search(torch.tensor([[0.0, 3.0]]), keys, k=1, metric="manhattan")
        (tensor([[1.]]), tensor([[2]]))
        >>> knn_search(torch.tensor([[0.1, 0.2]]), keys, k=2, exact_distances=True)[0]
        tensor([[0.2236, 0.9220]])
    """
    metric = check_metric(metric)
    check_pair(queries, keys, "queries", "keys")
    k = check_k(k, keys.shape[0])
    chunk_size = check_chunk_size(chunk_size)
    budget = check_memory_budget(memory_budget)
    if not isinstance(exact_distances, bool):
        raise TypeError(f"exact_distances must be a bool, got {exact_distances!r}")
    dtype = compute_dtype(queries, keys)
    n_queries, dim = queries.shape
    if n_queries == 0:
        return (
            torch.empty(0, k, dtype=dtype, device=queries.device),
            torch.empty(0, k, dtype=torch.int64, device=queries.device),
        )
    plan = plan_chunks(
        n_queries,
        keys.shape[0],
        dim,
        k,
        metric,
        chunk_size,
        memory_budget=budget,
        dtype=torch.float64 if dtype == torch.float64 else keys.dtype,
        device=queries.device,
    )
    kk = min(k if plan.keyed else k + 1, keys.shape[0])
    blocks = []
    key_sq_max = None
    center = _scores.key_center(keys, metric, dtype, sync_free=_plan.sync_free(queries.device))
    for q0 in range(0, n_queries, plan.query_block):
        block = _scores.prepare_queries(queries[q0 : q0 + plan.query_block], metric, dtype, center)
        scores, index, key_sq_max = scan(keys, block, plan, kk)
        blocks.append(Block(block, scores, index))
    scores = torch.cat([b.scores for b in blocks])
    index = torch.cat([b.index for b in blocks])
    dropped = None
    if kk > k:
        index, dropped = drop_kth_plus_one(keys, blocks, plan, scores, index, k)
    if exact_distances:
        distances = _exact(queries, keys, index, metric, dtype, budget)
    else:
        distances = _distances(
            queries, keys, blocks, scores, index, dropped, dtype, key_sq_max, budget
        )
    return _sorted(distances, index, dropped, k)


EXACT_BLOCK = 2**20
"""(Pair, feature) elements of one block of ``exact_distances``: measured fastest on CPU
between 2^19 and 2^20 (smaller blocks pay the per-call cost of a dozen torch calls,
larger ones leave the cache)."""


def _max_pairs(budget: int, dim: int) -> int:
    """Pairs recomputed at once: at most half the budget (20 bytes per pair and feature)."""
    return max(1, budget // (48 * max(1, dim)))


def _exact(
    queries: Tensor, keys: Tensor, index: Tensor, metric: str, dtype: torch.dtype, budget: int
) -> Tensor:
    """The distance of every (query, ``index``) pair from the differences, rounded once.

    Computed over blocks of whole query rows (or of one row's columns when a row alone is
    too large) of at most :data:`EXACT_BLOCK` (pair, feature) elements, 12 bytes each, and
    never more than half the budget.
    """
    n_queries, k = index.shape
    elements = min(EXACT_BLOCK, budget // 24)
    pairs = max(1, elements // max(1, queries.shape[1]))
    rows, columns = max(1, pairs // k), min(k, pairs)
    out = torch.empty(index.shape, dtype=dtype, device=queries.device)
    for r in range(0, n_queries, rows):
        for c in range(0, k, columns):
            block = index[r : r + rows, c : c + columns]
            out[r : r + rows, c : c + columns] = exact_metric(
                queries[r : r + rows], keys, block, metric
            )
    return out


def _distances(
    queries: Tensor,
    keys: Tensor,
    blocks: list[Block],
    scores: Tensor,
    index: Tensor,
    dropped: Tensor | None,
    dtype: torch.dtype,
    key_sq_max: Tensor | None,
    budget: int,
) -> Tensor:
    """Distances of the chosen pairs, recomputed exactly where they are close to 0."""
    metric = blocks[0].queries.metric
    query_sq = None
    if blocks[0].queries.sq_norms is not None:
        query_sq = torch.cat([b.queries.sq_norms for b in blocks])  # type: ignore[misc]
        query_sq = query_sq.unsqueeze(1)
    values = _scores.distances_from_scores(scores, metric, query_sq)
    bound = _scores.cancellation_bound(metric, queries.shape[1], dtype, query_sq, key_sq_max)
    if bound is not None:
        near_zero = values <= bound
        if dropped is not None:
            near_zero &= ~dropped
        rows = torch.arange(queries.shape[0], device=queries.device).unsqueeze(1)
        _scores.refine_near_zero(
            values,
            near_zero,
            queries,
            rows.expand_as(index),
            keys,
            index,
            metric,
            _max_pairs(budget, queries.shape[1]),
            sync_free=_plan.sync_free(queries.device),
        )
    return _scores.finish(values, metric)


def _sorted(
    distances: Tensor, index: Tensor, dropped: Tensor | None, k: int
) -> tuple[Tensor, Tensor]:
    """The k kept entries of every row, sorted by (distance, index)."""
    if distances.dtype == torch.float32:
        # Non-negative floats order as their bit patterns (NaN, sign cleared, last).
        bits = distances.view(torch.int32).long() & 0x7FFFFFFF
        key = (bits << 32) | index
        if dropped is not None:
            key.masked_fill_(dropped, torch.iinfo(torch.int64).max)
        order = key.argsort(dim=1)
    else:
        if dropped is not None:
            distances = distances.masked_fill(dropped, math.inf)
            index = index.masked_fill(dropped, torch.iinfo(torch.int64).max)
        by_index = index.argsort(dim=1)
        order = by_index.gather(1, distances.gather(1, by_index).argsort(dim=1, stable=True))
    order = order[:, :k]
    return distances.gather(1, order), index.gather(1, order)
