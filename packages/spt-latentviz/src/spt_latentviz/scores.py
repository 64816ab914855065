"""How faithful a 2D map is: trustworthiness and kNN recall, computed a block of rows at a time.

Nothing here builds an ``N x N`` matrix: neighbour lists come from
:func:`spt_distance.knn_search`, and the ranks trustworthiness needs are computed a block of
rows at a time.
"""

from __future__ import annotations

import torch
from torch import Tensor

from spt_distance import pairwise_distances
from spt_latentviz._checks import as_rows, check_k
from spt_latentviz._graph import neighbour_graph

__all__ = ["knn_recall", "trustworthiness"]

# Distances held at once by the blocked rank computation (elements, about 16 MiB in fp32).
_BLOCK_ELEMENTS = 1 << 22


def trustworthiness(
    high: Tensor, low: Tensor, k: int, metric: str = "euclidean", chunk_size: int | None = None
) -> Tensor:
    """How much the ``k`` nearest neighbours of the low-dimensional map can be trusted.

    Venna and Kaski's trustworthiness, as in ``sklearn.manifold.trustworthiness``::

        T(k) = 1 - 2 / (N k (2N - 3k - 1)) * sum_i sum_{j in U_i} (r(i, j) - k)

    where ``U_i`` holds the map's ``k`` nearest neighbours of ``i`` that are not among its
    ``k`` nearest in the original space, and ``r(i, j)`` is the rank of ``j`` among ``i``'s
    neighbours in the original space. Low-dimensional neighbours come from
    :func:`spt_distance.knn_search` (euclidean); ranks are computed on blocks of rows, so the
    memory is ``O(block * N)``, never ``O(N^2)``. Tied distances rank by index, as in
    scikit-learn.

    Args:
        high: Original points, shape ``(N, D)``.
        low: Their embedding, shape ``(N, d)``.
        k: Neighbourhood size, ``1 <= k < N / 2``.
        metric: Metric of the original space (any of :func:`spt_distance.pairwise_distances`).
        chunk_size: Rows per block for the ranks and key chunk of
            :func:`spt_distance.knn_search` (``None``: from a 16 MiB budget; ``-1``: one
            block).

    Returns:
        Scalar fp64 tensor in ``[0, 1]`` (1: every map neighbour is a true neighbour).

    Raises:
        TypeError: If ``high`` or ``low`` is not a tensor, or ``k`` not an int.
        ValueError: If the shapes disagree or ``k`` is out of range.

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0]])
        >>> trustworthiness(x, x, k=2).item()
        1.0
        >>> shuffled = torch.tensor([[0.0], [5.0], [1.0], [4.0], [2.0], [3.0]])
        >>> round(trustworthiness(x, shuffled, k=2).item(), 4)
        0.5667
    """
    high, low_neighbours = _paired(high, low, k, chunk_size, trustworthiness=True)
    n = high.shape[0]
    block = n if chunk_size == -1 else chunk_size or max(1, _BLOCK_ELEMENTS // n)
    penalty = torch.zeros((), dtype=torch.float64, device=high.device)
    positions = torch.arange(n, device=high.device).unsqueeze(0)
    for start in range(0, n, block):
        rows = torch.arange(start, min(start + block, n), device=high.device)
        distances = pairwise_distances(high[rows], high, metric=metric)
        distances[torch.arange(len(rows), device=high.device), rows] = torch.inf
        order = torch.argsort(distances, dim=1, stable=True)
        rank_of = torch.empty_like(order).scatter_(1, order, positions.expand_as(order))
        ranks = rank_of.gather(1, low_neighbours[rows]) + 1
        penalty += (ranks - k).clamp(min=0).sum()
    return 1.0 - penalty * (2.0 / (n * k * (2.0 * n - 3.0 * k - 1.0)))


def knn_recall(
    high: Tensor, low: Tensor, k: int, metric: str = "euclidean", chunk_size: int | None = None
) -> Tensor:
    """Fraction of each point's ``k`` nearest neighbours that stay among its ``k`` nearest in
    the embedding, averaged over points.

    Args:
        high: Original points, shape ``(N, D)``.
        low: Their embedding, shape ``(N, d)`` (euclidean).
        k: Neighbourhood size, ``1 <= k <= N - 1``.
        metric: Metric of the original space.
        chunk_size: Key chunk of :func:`spt_distance.knn_search`.

    Returns:
        Scalar fp32 tensor in ``[0, 1]``; a random embedding scores about ``k / (N - 1)``.

    Raises:
        TypeError: If ``high`` or ``low`` is not a tensor, or ``k`` not an int.
        ValueError: If the shapes disagree or ``k`` is out of range.

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [3.0], [10.0]])
        >>> knn_recall(x, x, k=1).item()
        1.0
        >>> knn_recall(x, torch.tensor([[0.0], [1.0], [9.0], [3.0]]), k=1).item()
        0.5
    """
    high, kept = _paired(high, low, k, chunk_size, trustworthiness=False)
    true = neighbour_graph(high, k, metric=metric, chunk_size=chunk_size)
    shared = (true.unsqueeze(2) == kept.unsqueeze(1)).any(dim=2)
    return shared.float().mean()


def _paired(
    high: Tensor, low: Tensor, k: int, chunk_size: int | None, trustworthiness: bool
) -> tuple[Tensor, Tensor]:
    """Both maps checked (the same rows, ``k`` in range) as ``(N, D)`` rows: ``high`` and
    the ``k`` nearest neighbours of every row of ``low``, on ``high``'s device."""
    high, low = as_rows(high, "high"), as_rows(low, "low")
    n = high.shape[0]
    if low.shape[0] != n:
        raise ValueError(f"high and low must have the same rows, got {n} and {low.shape[0]}")
    if trustworthiness:
        check_k(k, n, (n - 1) // 2, "trustworthiness needs k < N / 2")
    else:
        check_k(k, n, n - 1, "it must be at most N - 1")
    return high, neighbour_graph(low, k, chunk_size=chunk_size).to(high.device)


def map_scores(high: Tensor, low: Tensor, k: int, metric: str = "euclidean") -> dict[str, Tensor]:
    """The faithfulness scores LatentViz logs: ``trustworthiness`` and ``knn_recall`` at ``k``.

    Args:
        high: Original points, shape ``(N, D)``.
        low: Their embedding, shape ``(N, d)``.
        k: Neighbourhood size, ``1 <= k < N / 2``.
        metric: Metric of the original space.

    Returns:
        Both scores as scalar fp32 tensors.

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0]])
        >>> {key: value.item() for key, value in map_scores(x, x, 2).items()}
        {'trustworthiness': 1.0, 'knn_recall': 1.0}
    """
    return {
        "trustworthiness": trustworthiness(high, low, k, metric).float(),
        "knn_recall": knn_recall(high, low, k, metric),
    }
