"""All distances between two sets of rows."""

from __future__ import annotations

import torch
from torch import Tensor

from spt_distance import _scores
from spt_distance._checks import (
    DEFAULT_MEMORY_BUDGET,
    check_metric,
    check_pair,
    compute_dtype,
)


def pairwise_distances(x: Tensor, y: Tensor, metric: str = "euclidean") -> Tensor:
    """Distances between every row of ``x`` and every row of ``y``.

    ``"euclidean"`` and ``"squared_euclidean"`` use one matrix product
    (``|x|^2 + |y|^2 - 2 x y^T``, on rows shifted by a common centre when they share a large
    offset, which leaves the distances unchanged), clamped at 0; pairs whose value is within
    the product's rounding error of 0 are recomputed from their differences, so identical
    rows give exactly 0. ``"cosine"`` is ``1 - cos(x, y)`` in ``[0, 2]``; a zero vector has cosine
    similarity 0 with every vector, itself included, so its distance to anything is 1 (no
    NaN). ``"manhattan"`` is the L1 distance (``torch.cdist`` with ``p=1``).

    float16 and bfloat16 inputs are computed in float32 (float32 accumulation and output);
    float64 inputs are computed and returned in float64.

    Args:
        x: ``(n, d)`` floating-point tensor.
        y: ``(m, d)`` floating-point tensor on the same device.
        metric: One of :data:`spt_distance.METRICS`.

    Returns:
        ``(n, m)`` tensor of distances, float32 (float64 for float64 inputs).

    Raises:
        ValueError: Unknown ``metric``, inputs that are not 2D, different feature counts or
            devices.
        TypeError: Inputs that are not floating-point tensors.

    Example:
        >>> x = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
        >>> pairwise_distances(x, x)
        tensor([[0., 5.],
                [5., 0.]])
        >>> pairwise_distances(x, torch.tensor([[1.0, 0.0]]), metric="cosine")
        tensor([[1.0000],
                [0.4000]])
        >>> pairwise_distances(x, x, metric="manhattan")
        tensor([[0., 7.],
                [7., 0.]])
    """
    metric = check_metric(metric)
    check_pair(x, y, "x", "y")
    dtype = compute_dtype(x, y)
    queries = _scores.prepare_queries(y, metric, dtype, _scores.key_center(x, metric, dtype))
    out = torch.empty(x.shape[0], y.shape[0], dtype=dtype, device=x.device)
    x_sq_norms = _scores.score_tile(x, queries, out)
    sq_norms = queries.sq_norms
    values = _scores.distances_from_scores(
        out, metric, None if sq_norms is None else sq_norms.unsqueeze(0)
    )
    bound = _scores.cancellation_bound(
        metric,
        x.shape[1],
        dtype,
        None if x_sq_norms is None else x_sq_norms.unsqueeze(1),
        None if sq_norms is None else sq_norms.unsqueeze(0),
    )
    if bound is not None and values.numel():
        rows = torch.arange(x.shape[0], device=x.device).unsqueeze(1).expand_as(values)
        cols = torch.arange(y.shape[0], device=x.device).unsqueeze(0).expand_as(values)
        max_pairs = max(1, DEFAULT_MEMORY_BUDGET // (24 * max(1, x.shape[1])))
        _scores.refine_near_zero(values, values <= bound, x, rows, y, cols, metric, max_pairs)
    return _scores.finish(values, metric)
