"""How `knn_search` cuts its work: tiles, chunks and query blocks within a memory budget."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from spt_distance import _scores
from spt_distance._checks import (
    check_chunk_size,
    check_count,
    check_device,
    check_dtype,
    check_k,
    check_memory_budget,
    check_metric,
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
    """How `knn_search` cuts its work, and the scratch memory that costs.

    :func:`plan_chunks` builds it; a user reads it to size ``chunk_size`` or
    ``memory_budget``.

    Args:
        tile: Keys per matrix product.
        chunk: Keys scored per step (a multiple of ``tile``, or every key).
        query_block: Queries searched together.
        scratch_bytes: Upper estimate of the extra memory of a step (scores, top-k
            candidates, buffers) and of the prepared queries.
        keyed: Whether candidates are ranked by one int64 key per (score, index) pair, which
            settles ties at the k-th place without a host sync (off the CPU, for float32
            scores).

    Example:
        >>> plan = plan_chunks(8, 3000, 16, 5, chunk_size=1500)
        >>> plan.tile, plan.chunk, plan.query_block, plan.keyed
        (1024, 2048, 8, False)
    """

    tile: int
    chunk: int
    query_block: int
    scratch_bytes: int
    keyed: bool = False


def plan_chunks(
    n_queries: int, n_keys: int, dim: int, k: int, metric: str = "euclidean",
    chunk_size: int | None = None, *, memory_budget: int | None = None,
    dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
) -> ChunkPlan:  # fmt: skip
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

    Raises:
        TypeError: If a size, ``k``, ``chunk_size`` or ``memory_budget`` is not an int,
            ``dtype`` not a ``torch.dtype`` or ``device`` neither a ``torch.device`` nor a str.
        ValueError: If ``n_queries`` or ``dim`` is negative, ``n_keys < 1``, ``k`` is outside
            ``[1, n_keys]``, ``metric``, ``chunk_size`` or ``memory_budget`` is not allowed,
            ``dtype`` is not floating or ``device`` names no device type.

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
    n_queries = check_count(n_queries, "n_queries", 0)
    n_keys = check_count(n_keys, "n_keys", 1)
    dim = check_count(dim, "dim", 0)
    k = check_k(k, n_keys)
    chunk_size = check_chunk_size(chunk_size)
    budget = check_memory_budget(memory_budget)
    dtype = check_dtype(dtype)
    device = check_device(device)
    tile = min(TILE, n_keys)
    # A key holds a float32 score's 32 bits above a key index below 2**32.
    keyed = sync_free(device) and dtype != torch.float64 and n_keys < 2**32
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


def sync_free(device: torch.device) -> bool:
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
    group = 1 if keyed else group_size(chunk, m, tile)
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


def group_size(rows: int, m: int, tile: int) -> int:
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
