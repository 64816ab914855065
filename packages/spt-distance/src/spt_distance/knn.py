"""Exact k-nearest-neighbour search that streams over chunks of keys."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from spt_distance import _scores
from spt_distance._checks import (
    check_chunk_size,
    check_k,
    check_memory_budget,
    check_metric,
    check_pair,
    compute_dtype,
)

TILE = 1024
"""Keys per matrix product. Every key is scored by a product of this fixed shape, aligned on
multiples of ``TILE``, so a pair's score never depends on ``chunk_size``."""

_MAX_GROUP = 64
# glibc hands allocations above 32 MiB back to the system when they are freed, so a
# larger score buffer is paged in again at every call (measured: about 10% of a search).
_MAX_SCORE_BYTES = 30 * 2**20
# What the plan counts is not all a call allocates (allocator rounding, BLAS packing, the
# final sort): measured up to 5 MiB above the plan at D=2048, so the plan keeps 10% spare.
_PLANNED_SHARE = 0.9
_CANDIDATE_COST = 24.0  # ns per candidate value: a cache miss to gather it, then topk


@dataclass(frozen=True)
class ChunkPlan:
    """How `knn_search` cuts its work, and the scratch memory that costs."""

    tile: int
    """Keys per matrix product."""
    chunk: int
    """Keys scored per step (a multiple of ``tile``, or every key)."""
    query_block: int
    """Queries searched together."""
    scratch_bytes: int
    """Upper estimate of the extra memory of a step (scores, top-k candidates, buffers) and
    of the prepared queries."""
    keyed: bool = False
    """Whether candidates are ranked by one int64 key per (score, index) pair, which settles
    ties at the k-th place without a host sync (off the CPU, for float32 scores)."""


def plan_chunks(
    n_queries: int,
    n_keys: int,
    dim: int,
    k: int,
    metric: str = "euclidean",
    chunk_size: int | None = None,
    *,
    memory_budget: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> ChunkPlan:
    """The chunking `knn_search` uses for these sizes (no data needed).

    Args:
        n_queries: Number of query rows ``B``.
        n_keys: Number of key rows ``N``.
        dim: Number of features ``D``.
        k: Number of neighbours.
        metric: One of :data:`spt_distance.METRICS`.
        chunk_size: As in `knn_search`.
        memory_budget: As in `knn_search`.
        dtype: dtype of the keys (float64 when either input is float64).
        device: Where the search runs: off the CPU the plan avoids host syncs.

    Returns:
        The :class:`ChunkPlan`.

    Example:
        >>> plan = plan_chunks(256, 65536, 128, 20)
        >>> plan.chunk, plan.query_block, plan.scratch_bytes <= 64 * 2**20
        (30720, 256, True)
        >>> plan_chunks(256, 65536, 128, 20, chunk_size=-1).chunk
        65536
        >>> plan_chunks(256, 65536, 128, 20, chunk_size=1500).chunk
        2048
    """
    metric = check_metric(metric)
    chunk_size = check_chunk_size(chunk_size)
    budget = check_memory_budget(memory_budget)
    tile = min(TILE, n_keys)
    # A key holds a float32 score's 32 bits above a key index below 2**32.
    device = torch.device(device)
    keyed = _sync_free(device) and dtype != torch.float64 and n_keys < 2**32
    on_cpu = device.type == "cpu"
    # Every query block stays prepared (upcast, scaled, with its norms) until the end.
    prepared = n_queries * (dim + 1) * (8 if dtype == torch.float64 else 4)

    def scratch(query_block: int, chunk: int, ranked: bool = keyed) -> int:
        kk = min(k if ranked else k + 1, n_keys)
        step = _scratch(query_block, chunk, tile, dim, kk, metric, dtype, ranked, on_cpu)
        return prepared + step

    def fits(query_block: int) -> bool:
        # Query blocks set the last bits of the scores: both rankings plan the same blocks.
        return max(scratch(query_block, tile, False), scratch(query_block, tile, True)) <= budget

    query_block = max(1, n_queries)
    while query_block > 1 and not fits(query_block):
        query_block = -(-query_block // 2)
    n_tiles = -(-n_keys // tile)
    if chunk_size is None:
        planned = int(budget * _PLANNED_SHARE)
        elt = 8 if dtype == torch.float64 else 4
        tiles = max(1, min(n_tiles, _MAX_SCORE_BYTES // (tile * query_block * elt)))
        while tiles > 1 and scratch(query_block, tiles * tile) > planned:
            tiles = max(1, min(tiles - 1, tiles * 7 // 8))
    elif chunk_size == -1:
        tiles = n_tiles
    else:
        tiles = min(n_tiles, -(-chunk_size // tile))
    chunk = min(tiles * tile, n_keys)
    return ChunkPlan(tile, chunk, query_block, scratch(query_block, chunk), keyed)


def _sync_free(device: torch.device) -> bool:
    """Whether a search on ``device`` must not wait for it: off the CPU, where a host sync
    stalls the queue of kernels."""
    return device.type != "cpu"


def _scratch(
    n_queries: int,
    chunk: int,
    tile: int,
    dim: int,
    kk: int,
    metric: str,
    dtype: torch.dtype,
    keyed: bool = False,
    on_cpu: bool = True,
) -> int:
    """Bytes of one step: the chunk's scores, the top-k candidates, the per-tile buffers."""
    elt = 8 if dtype == torch.float64 else 4
    m = min(kk, chunk)
    group = 1 if keyed else _group_size(chunk, m, tile)
    # Keyed: the chunk's int64 keys and one int64 temporary beside the float scores.
    scores = chunk * n_queries * (elt + 16 if keyed else elt)
    group_mins = (chunk // group) * n_queries * elt if group > 1 else 0
    candidates = (group * m + group) * n_queries * (elt + 8) * 2
    running = 3 * 2 * kk * n_queries * (elt + 8)
    per_tile = tile * (2 * elt + 8)
    buffers = _scores.scratch_elements(metric, tile, n_queries, dim, on_cpu=on_cpu)
    per_tile += buffers * elt
    if metric == "manhattan" and on_cpu:
        # Resident memory beyond the tensors while the elementwise passes run on two
        # threads: up to twice the difference block (RSS 66 MiB, tensors 54 MiB).
        per_tile += 2 * (buffers - tile * dim) * elt
    return scores + group_mins + candidates + running + per_tile


def knn_search(
    queries: Tensor,
    keys: Tensor,
    k: int,
    metric: str = "euclidean",
    chunk_size: int | None = None,
    *,
    memory_budget: int | None = None,
) -> tuple[Tensor, Tensor]:
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
            (:data:`spt_distance.knn.TILE` = 1024 keys), at most ``N``.
        memory_budget: Scratch bytes that ``chunk_size=None`` plans for, also the bound
            under which queries are split into blocks (default
            :data:`spt_distance.DEFAULT_MEMORY_BUDGET`, 64 MiB).

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
    """
    metric = check_metric(metric)
    check_pair(queries, keys, "queries", "keys")
    k = check_k(k, keys.shape[0])
    chunk_size = check_chunk_size(chunk_size)
    budget = check_memory_budget(memory_budget)
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
    center = _scores.key_center(keys, metric, dtype, sync_free=_sync_free(queries.device))
    for q0 in range(0, n_queries, plan.query_block):
        block = _scores.prepare_queries(queries[q0 : q0 + plan.query_block], metric, dtype, center)
        scores, index, key_sq_max = _scan(keys, block, plan, kk)
        blocks.append(_Block(block, scores, index))
    scores = torch.cat([b.scores for b in blocks])
    index = torch.cat([b.index for b in blocks])
    dropped = None
    if kk > k:
        index, dropped = _drop_kth_plus_one(keys, blocks, plan, scores, index, k)
    distances = _distances(queries, keys, blocks, scores, index, dropped, dtype, key_sq_max, budget)
    return _sorted(distances, index, dropped, k)


@dataclass(frozen=True)
class _Block:
    queries: _scores.Queries
    scores: Tensor
    """(B, k + 1) lowest scores, unordered."""
    index: Tensor


def _scan(
    keys: Tensor, queries: _scores.Queries, plan: ChunkPlan, kk: int
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The ``kk`` lowest scores of every query as ``(B, kk)`` scores and key indices, and
    the largest squared key norm (euclidean metrics). The multiset of scores is exact."""
    buffer = _score_buffer(plan, queries)
    best: tuple[Tensor, Tensor] | None = None
    best_keys: Tensor | None = None
    sq_max = None
    for start in range(0, keys.shape[0], plan.chunk):
        n_rows = min(plan.chunk, keys.shape[0] - start)
        group = 1 if plan.keyed else _group_size(n_rows, min(kk, n_rows), plan.tile)
        scores, mins, chunk_sq_max = _score_chunk(keys, start, plan, queries, buffer, group)
        if chunk_sq_max is not None:
            sq_max = chunk_sq_max if sq_max is None else torch.maximum(sq_max, chunk_sq_max)
        if plan.keyed:
            found = _lowest_keys(scores, start, kk)
            if best_keys is not None:
                found = _lowest_keys_of(torch.cat((best_keys, found), 1), kk)
            best_keys = found
            continue
        values, rows = _lowest(scores, mins, group, kk)
        rows += start
        if best is not None:
            values, rows = torch.cat((best[0], values), 1), torch.cat((best[1], rows), 1)
            top = values.topk(min(kk, values.shape[1]), dim=1, largest=False, sorted=False)
            values, rows = top.values, rows.gather(1, top.indices)
        best = values, rows
    if best_keys is not None:
        return (*_decode_keys(best_keys), sq_max)
    assert best is not None
    return best[0], best[1], sq_max


def _score_buffer(plan: ChunkPlan, queries: _scores.Queries) -> tuple[Tensor, Tensor]:
    """The chunk's (chunk, B) scores and the flat per-tile scratch of `score_tile`."""
    rows = queries.rows
    scores = torch.empty(plan.chunk, rows.shape[0], dtype=rows.dtype, device=rows.device)
    on_cpu = rows.device.type == "cpu"
    size = _scores.scratch_elements(queries.metric, plan.tile, *rows.shape, on_cpu=on_cpu)
    return scores, torch.empty(size, dtype=rows.dtype, device=rows.device)


def _score_chunk(
    keys: Tensor,
    start: int,
    plan: ChunkPlan,
    queries: _scores.Queries,
    buffer: tuple[Tensor, Tensor],
    group: int = 1,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Scores of keys ``[start, start + chunk)`` as a view of ``buffer``, tile by tile.

    Also returns, when ``group > 1``, the (rows // group, B) minima of every run of
    ``group`` rows (taken while each tile is still in cache; trailing rows that fill no
    group are left out), and the largest squared key norm for the euclidean metrics.
    """
    stop = min(start + plan.chunk, keys.shape[0])
    scores, scratch = buffer
    n_queries = scores.shape[1]
    mins = None
    if group > 1:
        mins = scores.new_empty((stop - start) // group, n_queries)
    norms = []
    for t0 in range(start, stop, plan.tile):
        t1 = min(t0 + plan.tile, stop)
        tile = scores[t0 - start : t1 - start]
        sq_norms = _scores.score_tile(keys[t0:t1], queries, tile, scratch)
        if sq_norms is not None:
            norms.append(sq_norms.amax())
        if mins is not None:
            full = (t1 - t0) // group
            first = (t0 - start) // group
            grouped = tile[: full * group].view(full, group, n_queries)
            torch.amin(grouped, dim=1, out=mins[first : first + full])
    sq_max = torch.stack(norms).amax() if norms else None
    return scores[: stop - start], mins, sq_max


def _group_size(rows: int, m: int, tile: int) -> int:
    """Rows per group of the min-prefilter (1 disables it): the power of two dividing
    ``tile`` (at most 64) with the cheapest expected selection for ``m`` of ``rows``."""
    best, best_cost = 1, _topk_cost(rows, m)
    group = 2
    while group <= _MAX_GROUP and tile % group == 0 and rows // group >= 2 * m:
        cost = _topk_cost(rows // group, m) + _CANDIDATE_COST * m * group
        if cost < best_cost:
            best, best_cost = group, cost
        group *= 2
    return best


def _topk_cost(n: int, m: int) -> float:
    """Expected nanoseconds per query of ``topk(m)`` over ``n`` values on one CPU core
    (measured): the kernel keeps a heap when ``64 m <= n`` (about 3 ns per value plus
    the insertions), else it runs a selection (about 12 ns per value)."""
    if 64 * m <= n:
        return 3.0 * n + 53.0 * m * math.log(n / m)
    return 12.0 * n


def _lowest(scores: Tensor, mins: Tensor | None, group: int, kk: int) -> tuple[Tensor, Tensor]:
    """The ``min(kk, rows)`` lowest of every column of the (rows, B) ``scores``, as (B, m)
    values and row indices.

    The multiset of values is exact: with groups, only the ``kk`` groups with the lowest
    minima are searched, and every value below the ``kk``-th lowest group minimum lies in
    one of them (rows after the last full group are searched as well).
    """
    rows, n_queries = scores.shape
    m = min(kk, rows)
    if mins is None:
        top = scores.T.topk(m, dim=1, largest=False, sorted=False)
        return top.values, top.indices
    chosen = mins.topk(m, dim=0, largest=False, sorted=False).indices.T
    offsets = torch.arange(group, device=scores.device)
    where = (chosen.unsqueeze(2) * group + offsets).reshape(n_queries, m * group)
    columns = torch.arange(n_queries, device=scores.device).unsqueeze(1)
    values = scores.view(-1).index_select(0, (where * n_queries + columns).view(-1))
    values = values.view(n_queries, m * group)
    covered = mins.shape[0] * group
    if covered < rows:
        tail = torch.arange(covered, rows, device=scores.device)
        values = torch.cat((values, scores[covered:].T), 1)
        where = torch.cat((where, tail.expand(n_queries, -1)), 1)
    top = values.topk(m, dim=1, largest=False, sorted=False)
    return top.values, where.gather(1, top.indices)


def _lowest_keys(scores: Tensor, start: int, kk: int) -> Tensor:
    """The ``min(kk, rows)`` lowest (score, row) pairs of every column of the (rows, B)
    float32 ``scores`` (overwritten), as (B, m) int64 keys.

    A key holds the score's bits, remapped so that integers order as the floats do, above
    the row index ``start + i``: ordering keys orders by score, then by index, with no
    ties. Needs fewer than 2**32 keys.
    """
    rows = scores.shape[0]
    bits = _float_order(scores.add_(0.0).view(torch.int32).T.long())  # adding 0: -0 becomes +0
    bits <<= 32
    bits |= torch.arange(start, start + rows, device=scores.device)
    return _lowest_keys_of(bits, kk)


def _lowest_keys_of(keys: Tensor, kk: int) -> Tensor:
    return keys.topk(min(kk, keys.shape[1]), dim=1, largest=False).values


def _float_order(bits: Tensor) -> Tensor:
    """Remap sign-extended float32 bit patterns, in place, so that integers order as the
    floats do (negative patterns get their 31 low bits flipped); the map is its own inverse.
    Holds one int64 temporary the size of ``bits``."""
    bits ^= (bits >> 31).bitwise_and_(0x7FFFFFFF)
    return bits


def _decode_keys(keys: Tensor) -> tuple[Tensor, Tensor]:
    """(scores, indices) of `_lowest_keys` keys."""
    return _float_order(keys >> 32).int().view(torch.float32), keys & 0xFFFFFFFF


def _drop_kth_plus_one(
    keys: Tensor, blocks: list[_Block], plan: ChunkPlan, scores: Tensor, index: Tensor, k: int
) -> tuple[Tensor, Tensor]:
    """Mark which of the (B, k + 1) entries is not among the k nearest.

    Without a tie at the k-th score that is the unique largest score. With one, entries
    scoring below the k-th score stay and the remaining places go to the smallest indices
    that score exactly the k-th score, found by a second pass over the keys (run only when
    such a tie exists: one host sync).
    """
    top2 = scores.topk(2, dim=1)
    largest, kth = top2.values.unbind(1)
    dropped = torch.zeros_like(scores, dtype=torch.bool)
    dropped.scatter_(1, top2.indices[:, :1], True)
    tied = largest == kth
    if not bool(tied.any()):
        return index, dropped
    tau = torch.where(tied, kth, torch.full_like(kth, math.nan))
    smallest = []
    q0 = 0
    for block in blocks:
        n = block.scores.shape[0]
        smallest.append(_smallest_rows_scoring(keys, block.queries, plan, tau[q0 : q0 + n], k))
        q0 += n
    tied_rows = torch.cat(smallest, dim=1).T
    at_kth = scores >= kth.unsqueeze(1)
    slots = k - (~at_kth).sum(dim=1, keepdim=True)
    rank = at_kth.cumsum(dim=1) - 1
    take = at_kth & (rank < slots)
    replace = tied.unsqueeze(1) & take
    index = torch.where(replace, tied_rows.gather(1, rank.clamp_(0, k - 1)), index)
    dropped = torch.where(tied.unsqueeze(1), at_kth & ~take, dropped)
    return index, dropped


def _smallest_rows_scoring(
    keys: Tensor, queries: _scores.Queries, plan: ChunkPlan, tau: Tensor, k: int
) -> Tensor:
    """(k, B) smallest key indices whose score equals ``tau`` (padded with N)."""
    n_keys = keys.shape[0]
    buffer = _score_buffer(plan, queries)
    best = None
    for start in range(0, n_keys, plan.chunk):
        scores, _, _ = _score_chunk(keys, start, plan, queries, buffer)
        for t0 in range(0, scores.shape[0], plan.tile):
            part = scores[t0 : t0 + plan.tile]
            rows = torch.arange(start + t0, start + t0 + part.shape[0], device=keys.device)
            rows = rows.unsqueeze(1).expand_as(part)
            candidates = torch.where(part == tau, rows, torch.full_like(rows, n_keys))
            if best is not None:
                candidates = torch.cat((best, candidates))
            best = candidates.topk(min(k, candidates.shape[0]), dim=0, largest=False).values
    assert best is not None
    return best


def _distances(
    queries: Tensor,
    keys: Tensor,
    blocks: list[_Block],
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
        # Refinement takes at most half the budget (20 bytes per pair and feature).
        max_pairs = max(1, budget // (48 * max(1, queries.shape[1])))
        _scores.refine_near_zero(
            values,
            near_zero,
            queries,
            rows.expand_as(index),
            keys,
            index,
            metric,
            max_pairs,
            sync_free=_sync_free(queries.device),
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
