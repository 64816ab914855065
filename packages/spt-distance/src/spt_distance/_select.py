"""The selection behind `knn_search`: score chunks of keys, keep the lowest, settle ties."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from spt_distance import _plan, _scores
from spt_distance._plan import ChunkPlan


@dataclass(frozen=True)
class Block:
    """One block of queries and its candidates."""

    queries: _scores.Queries
    scores: Tensor
    """(B, k + 1) lowest scores, unordered."""
    index: Tensor


def scan(
    keys: Tensor, queries: _scores.Queries, plan: ChunkPlan, kk: int
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The ``kk`` lowest scores of every query as ``(B, kk)`` scores and key indices, and
    the largest squared key norm (euclidean metrics). The multiset of scores is exact."""
    buffer = score_buffer(plan, queries)
    best: tuple[Tensor, Tensor] | None = None
    best_keys: Tensor | None = None
    sq_max = None
    for start in range(0, keys.shape[0], plan.chunk):
        n_rows = min(plan.chunk, keys.shape[0] - start)
        group = 1 if plan.keyed else _plan.group_size(n_rows, min(kk, n_rows), plan.tile)
        scores, mins, chunk_sq_max = score_chunk(keys, start, plan, queries, buffer, group)
        if chunk_sq_max is not None:
            sq_max = chunk_sq_max if sq_max is None else torch.maximum(sq_max, chunk_sq_max)
        if plan.keyed:
            found = lowest_keys(scores, start, kk)
            if best_keys is not None:
                found = lowest_keys_of(torch.cat((best_keys, found), 1), kk)
            best_keys = found
            continue
        values, rows = lowest(scores, mins, group, kk)
        rows += start
        if best is not None:
            values, rows = torch.cat((best[0], values), 1), torch.cat((best[1], rows), 1)
            top = values.topk(min(kk, values.shape[1]), dim=1, largest=False, sorted=False)
            values, rows = top.values, rows.gather(1, top.indices)
        best = values, rows
    if best_keys is not None:
        return (*decode_keys(best_keys), sq_max)
    assert best is not None
    return best[0], best[1], sq_max


def score_buffer(plan: ChunkPlan, queries: _scores.Queries) -> tuple[Tensor, Tensor]:
    """The chunk's (chunk, B) scores and the flat per-tile scratch of `score_tile`."""
    rows = queries.rows
    scores = torch.empty(plan.chunk, rows.shape[0], dtype=rows.dtype, device=rows.device)
    on_cpu = rows.device.type == "cpu"
    size = _scores.scratch_elements(queries.metric, plan.tile, *rows.shape, on_cpu=on_cpu)
    return scores, torch.empty(size, dtype=rows.dtype, device=rows.device)


def score_chunk(
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


def lowest(scores: Tensor, mins: Tensor | None, group: int, kk: int) -> tuple[Tensor, Tensor]:
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


def lowest_keys(scores: Tensor, start: int, kk: int) -> Tensor:
    """The ``min(kk, rows)`` lowest (score, row) pairs of every column of the (rows, B)
    float32 ``scores`` (overwritten), as (B, m) int64 keys.

    A key holds the score's bits, remapped so that integers order as the floats do, above
    the row index ``start + i``: ordering keys orders by score, then by index, with no
    ties. Needs fewer than 2**32 keys.
    """
    rows = scores.shape[0]
    bits = float_order(scores.add_(0.0).view(torch.int32).T.long())  # adding 0: -0 becomes +0
    bits <<= 32
    bits |= torch.arange(start, start + rows, device=scores.device)
    return lowest_keys_of(bits, kk)


def lowest_keys_of(keys: Tensor, kk: int) -> Tensor:
    return keys.topk(min(kk, keys.shape[1]), dim=1, largest=False).values


def float_order(bits: Tensor) -> Tensor:
    """Remap sign-extended float32 bit patterns, in place, so that integers order as the
    floats do (negative patterns get their 31 low bits flipped); the map is its own inverse.
    Holds one int64 temporary the size of ``bits``."""
    bits ^= (bits >> 31).bitwise_and_(0x7FFFFFFF)
    return bits


def decode_keys(keys: Tensor) -> tuple[Tensor, Tensor]:
    """(scores, indices) of `_lowest_keys` keys."""
    return float_order(keys >> 32).int().view(torch.float32), keys & 0xFFFFFFFF


def drop_kth_plus_one(
    keys: Tensor, blocks: list[Block], plan: ChunkPlan, scores: Tensor, index: Tensor, k: int
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
        smallest.append(smallest_rows_scoring(keys, block.queries, plan, tau[q0 : q0 + n], k))
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


def smallest_rows_scoring(
    keys: Tensor, queries: _scores.Queries, plan: ChunkPlan, tau: Tensor, k: int
) -> Tensor:
    """(k, B) smallest key indices whose score equals ``tau`` (padded with N)."""
    n_keys = keys.shape[0]
    buffer = score_buffer(plan, queries)
    best = None
    for start in range(0, n_keys, plan.chunk):
        scores, _, _ = score_chunk(keys, start, plan, queries, buffer)
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
