"""The arithmetic shared by `pairwise_distances` and `knn_search`.

Keys are scored against a block of queries with one matrix product per tile of keys. The
score ranks keys exactly as the distance does but costs less to compute:

- euclidean, squared_euclidean: ``|x|^2 - 2 <x, q>`` (the squared distance minus ``|q|^2``);
- cosine: ``-<x, q> / (|x| |q|)`` (the distance minus 1), 0 when either vector is zero;
- manhattan: the distance itself.

For the euclidean metrics both sides are first shifted by one common centre (the keys'
mean), which leaves every distance unchanged: the expansion's rounding error then scales
with the rows' spread around the centre instead of their distance from the origin, so a
large common offset (features around 1000) does not drown the differences between rows.

Scores turn into distances on the few pairs that are returned. Where the matrix-product
expansion cancels (distance close to zero) the distance is recomputed from the differences
in float64, so identical rows come out exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from spt_distance._exact import EUCLIDEAN as _EUCLIDEAN
from spt_distance._exact import exact_distances

_ALIGNMENT = 64
CENTER_SAMPLE = 64
"""Key rows sampled to choose the centre of the euclidean scores (see `key_center`)."""
MANHATTAN_BLOCK = 2**20
"""Elements of the (keys, queries, features) difference block manhattan scores at a time."""


@dataclass(frozen=True)
class Queries:
    """Queries prepared once for scoring: upcast, normalised for cosine, with their norms."""

    metric: str
    rows: Tensor
    """(B, D) in the compute dtype, as the product needs them: ``-2 q`` for the euclidean
    metrics (exact scaling), unit rows (zero rows stay zero) for cosine, ``q`` for
    manhattan."""
    sq_norms: Tensor | None
    """(B,) squared norms (of the centred queries) for the euclidean metrics, else None."""
    center: Tensor | None = None
    """(D,) the point both queries and keys are shifted by (euclidean metrics), else None."""


def key_center(
    keys: Tensor, metric: str, dtype: torch.dtype, *, sync_free: bool = False
) -> Tensor | None:
    """The centre that the euclidean scores shift queries and keys by, or ``None``.

    The centre is the per-feature median of up to ``CENTER_SAMPLE`` rows of ``keys`` spread
    over them: a value of the data itself, so that integer (or otherwise exactly
    representable) features keep exact scores, and robust to a few outlying rows. It is used
    only where it helps, when it lies farther from the origin than the sampled rows lie from
    it; otherwise the search runs as without one (``None``, or with ``sync_free`` a zero
    centre, which gives the same bits without reading the decision on the host). Any centre
    leaves the distances unchanged; non-finite medians are replaced by 0.
    """
    if metric not in _EUCLIDEAN or keys.shape[0] == 0:
        return None
    step = max(1, keys.shape[0] // CENTER_SAMPLE)
    sample = keys[::step][:CENTER_SAMPLE].to(dtype)
    center = torch.nanmedian(sample, dim=0).values
    center = torch.nan_to_num_(center, nan=0.0, posinf=0.0, neginf=0.0)
    spread = (sample - center).square_().sum(dim=1).mean()
    useful = center.square().sum() > spread
    if sync_free:
        return torch.where(useful, center, torch.zeros_like(center))
    return center if bool(useful) else None


def prepare_queries(
    queries: Tensor, metric: str, dtype: torch.dtype, center: Tensor | None = None
) -> Queries:
    rows = queries.to(dtype)
    sq_norms = None
    if metric in _EUCLIDEAN:
        if center is not None:
            rows = rows - center
        sq_norms = rows.square().sum(dim=1)
        rows = rows * -2
    elif metric == "cosine":
        rows = rows * _inverse_norms(rows).unsqueeze(1)
    return Queries(metric, rows.contiguous(), sq_norms, center)


def _inverse_norms(rows: Tensor) -> Tensor:
    norms = torch.linalg.vector_norm(rows, dim=1)
    return torch.where(norms > 0, norms.reciprocal(), torch.zeros_like(norms))


def scratch_elements(
    metric: str, rows: int, n_queries: int, dim: int, *, on_cpu: bool = True
) -> int:
    """Elements of a ``scratch`` buffer that serves `score_tile` for any tile of at most
    ``rows`` keys and any block of at most ``n_queries`` queries."""
    if metric == "manhattan" and on_cpu:
        # The difference block of `_manhattan_by_blocks`, at its largest over smaller blocks.
        block = max(n_queries * dim, min(MANHATTAN_BLOCK, rows * n_queries * dim))
        return rows * dim + block
    return 2 * rows * dim


def score_tile(
    keys: Tensor, queries: Queries, out: Tensor, scratch: Tensor | None = None
) -> Tensor | None:
    """Write the (T, B) scores of ``keys`` (T, D) against ``queries`` into ``out``.

    ``scratch``, optional, is a flat buffer in the compute dtype of at least
    `scratch_elements` elements that saves the allocations of every tile; keys that are not
    in the compute dtype, not contiguous or not 64-byte aligned are copied into it. Returns
    the keys' squared norms (of the centred keys) for the euclidean metrics.
    """
    rows, dim = keys.shape
    dtype = queries.rows.dtype
    spare = None if scratch is None else scratch[rows * dim :]
    if queries.center is not None:
        out_keys = None if scratch is None else scratch[: rows * dim].view(rows, dim)
        keys = torch.sub(keys, queries.center, out=out_keys)
    elif scratch is not None and (
        keys.dtype != dtype or not keys.is_contiguous() or keys.data_ptr() % _ALIGNMENT
    ):
        # Same alignment and layout for every tile, whatever the input's dtype or offset:
        # some BLAS kernels round differently on unaligned operands.
        keys = scratch[: rows * dim].view(rows, dim).copy_(keys)
    elif keys.dtype != dtype:
        keys = keys.to(dtype)
    if queries.metric == "manhattan":
        if keys.device.type == "cpu":
            _manhattan_by_blocks(keys, queries.rows, out, spare)
        else:
            out.copy_(torch.cdist(keys, queries.rows, p=1))
        return None
    if queries.metric == "cosine":
        torch.mm(keys, queries.rows.T, out=out)
        out.mul_(_inverse_norms(keys).neg_().unsqueeze(1))
        return None
    if spare is None:
        squares = keys.square()
    else:
        squares = torch.mul(keys, keys, out=spare[: rows * dim].view(rows, dim))
    sq_norms = squares.sum(dim=1)
    torch.mm(keys, queries.rows.T, out=out)
    out.add_(sq_norms.unsqueeze(1))
    return sq_norms


def _manhattan_step(rows: int, n_queries: int, dim: int) -> int:
    return min(rows, max(1, MANHATTAN_BLOCK // max(1, n_queries * dim)))


def _manhattan_by_blocks(
    keys: Tensor, queries: Tensor, out: Tensor, scratch: Tensor | None = None
) -> None:
    """L1 distances of every key to every query, written into ``out`` (T, B).

    On CPU ``torch.cdist(p=1)`` runs a scalar loop; here a few keys at a time are compared
    with every query by broadcast subtraction, ``abs`` and a sum over the features, all
    vectorised, on blocks of about ``MANHATTAN_BLOCK`` elements (in ``scratch`` when given).
    Every pair's sum runs over the features in the same order whatever ``T`` is.
    """
    n_keys, (n_queries, dim) = keys.shape[0], queries.shape
    step = _manhattan_step(n_keys, n_queries, dim)
    size = step * n_queries * dim
    block = queries.new_empty(size) if scratch is None else scratch[:size]
    block = block.view(step, n_queries, dim)
    for start in range(0, n_keys, step):
        rows = keys[start : start + step]
        difference = block[: rows.shape[0]]
        torch.sub(rows.unsqueeze(1), queries, out=difference)
        torch.sum(difference.abs_(), dim=2, out=out[start : start + rows.shape[0]])


def distances_from_scores(scores: Tensor, metric: str, query_sq_norms: Tensor | None) -> Tensor:
    """Undo the score shift (``query_sq_norms`` broadcasts against ``scores``); not clamped."""
    if metric in _EUCLIDEAN:
        assert query_sq_norms is not None
        return scores + query_sq_norms
    if metric == "cosine":
        return scores + 1
    return scores.clone()


def cancellation_bound(
    metric: str, dim: int, dtype: torch.dtype, sq_norms_a: Tensor | None, sq_norms_b: Tensor | None
) -> Tensor | float | None:
    """Worst-case rounding error of the expansion, as a squared or cosine distance.

    A pair whose computed value is at most this bound may truly be at distance 0, so its
    distance is recomputed exactly. The bound holds for any summation order (``gamma_D``
    from the standard dot-product error analysis), with a factor two to spare.
    """
    if metric == "manhattan":
        return None
    unit_roundoff = torch.finfo(dtype).eps / 2
    gamma = (2 * dim + 16) * unit_roundoff
    if metric == "cosine":
        return gamma
    assert sq_norms_a is not None and sq_norms_b is not None
    return gamma * (sq_norms_a.sqrt() + sq_norms_b.sqrt()).square()


def refine_near_zero(
    values: Tensor,
    near_zero: Tensor,
    left: Tensor,
    left_rows: Tensor,
    right: Tensor,
    right_rows: Tensor,
    metric: str,
    max_pairs: int,
    *,
    sync_free: bool = False,
) -> None:
    """Overwrite ``values[near_zero]`` with exact distances, ``max_pairs`` pairs at a time.

    ``left_rows``/``right_rows`` have the shape of ``values`` and name the rows of ``left``
    and ``right`` that each entry compares. Finding the near-zero pairs costs one host sync
    (``nonzero``); with ``sync_free`` every pair is recomputed instead and the near-zero
    ones are kept, for few pairs on a device that the sync would stall.
    """
    if sync_free:
        li, ri = left_rows.reshape(-1), right_rows.reshape(-1)
    else:
        where = near_zero.nonzero(as_tuple=True)
        li, ri = left_rows[where], right_rows[where]
    exact = torch.empty(li.shape[0], dtype=values.dtype, device=values.device)
    for s in range(0, li.shape[0], max_pairs):
        part = slice(s, s + max_pairs)
        exact[part] = exact_distances(left, li[part], right, ri[part], metric)
    if sync_free:
        values.copy_(torch.where(near_zero, exact.view_as(values), values))
    else:
        values[where] = exact


def finish(values: Tensor, metric: str) -> Tensor:
    """Clamp to the metric's range in place; square root for euclidean."""
    if metric == "cosine":
        return values.clamp_(0, 2)
    values.clamp_(min=0)
    return values.sqrt_() if metric == "euclidean" else values
