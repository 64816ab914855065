"""The math of LatentViz as pure functions: neighbour graph, loss, faithfulness scores.

Nothing here builds an ``N x N`` matrix: neighbour lists come from
:func:`spt_distance.knn_search`, and the ranks trustworthiness needs are computed a block of
rows at a time.
"""

from __future__ import annotations

import torch
from torch import Tensor

from spt_distance import knn_search, pairwise_distances

__all__ = [
    "knn_recall",
    "neighbor_embedding_loss",
    "neighbor_graph",
    "sample_negatives",
    "trustworthiness",
]

# Distances held at once by the blocked rank computation (elements, about 16 MiB in fp32).
_BLOCK_ELEMENTS = 1 << 22
# Keeps -log(1 - q) finite when a negative lands on (or next to) its anchor.
_REPULSION_EPS = 1e-3


def _as_rows(x: Tensor, argument: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{argument} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"{argument} must have shape (N, D), got {tuple(x.shape)}")
    return x.reshape(x.shape[0], -1)


def _check_k(k: int, n: int, limit: int, allowed: str) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if k > limit:
        raise ValueError(f"k={k} is too large for {n} points; {allowed}")


def neighbor_graph(
    x: Tensor, k: int, metric: str = "euclidean", chunk_size: int | None = None
) -> Tensor:
    """The ``k`` nearest other rows of every row of ``x``, nearest first.

    A row is never its own neighbour, even when other rows coincide with it.

    Args:
        x: Points, shape ``(N, D)`` (more dimensions are flattened).
        k: Neighbours per point, ``1 <= k <= N - 1``.
        metric: Any metric of :func:`spt_distance.knn_search`.
        chunk_size: Key chunk of :func:`spt_distance.knn_search` (``None``: automatic).

    Returns:
        int64 tensor of shape ``(N, k)`` on ``x``'s device.

    Raises:
        ValueError: If ``x`` is not 2-D or ``k`` is out of range.

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
        >>> neighbor_graph(x, 2).tolist()
        [[1, 2], [0, 2], [1, 0], [2, 1]]
    """
    x = _as_rows(x, "x")
    n = x.shape[0]
    _check_k(k, n, n - 1, "it must be at most N - 1")
    _, indices = knn_search(x, x, min(k + 1, n), metric=metric, chunk_size=chunk_size)
    others = indices != torch.arange(n, device=indices.device).unsqueeze(1)
    # Stable sort moves each row's self-match (if found) to the end, keeping the order.
    order = torch.argsort((~others).to(torch.uint8), dim=1, stable=True)
    return indices.gather(1, order[:, :k])


def sample_negatives(
    num_points: int,
    neighbors: Tensor,
    n_negatives: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Uniformly drawn negatives: ``n_negatives`` point indices per positive pair.

    Args:
        num_points: Number of points to draw from.
        neighbors: The neighbour graph, shape ``(N, k)``; only its shape and device are used.
        n_negatives: Negatives per positive pair (>= 1).
        generator: Random source; drawing happens on its device, then moves to
            ``neighbors``'s device. ``None`` uses the global generator.

    Returns:
        int64 tensor of shape ``(N, k, n_negatives)`` with values in ``[0, num_points)``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> sample_negatives(10, torch.zeros(4, 3, dtype=torch.long), 5, g).shape
        torch.Size([4, 3, 5])
    """
    if isinstance(n_negatives, bool) or not isinstance(n_negatives, int) or n_negatives < 1:
        raise ValueError(f"n_negatives must be a positive int, got {n_negatives!r}")
    device = generator.device if generator is not None else neighbors.device
    drawn = torch.randint(
        num_points, (*neighbors.shape, n_negatives), generator=generator, device=device
    )
    return drawn.to(neighbors.device, non_blocking=True)


def neighbor_embedding_loss(z: Tensor, neighbors: Tensor, negatives: Tensor) -> Tensor:
    """Negative-sampling cross-entropy of a low-dimensional embedding (UMAP/LargeVis style).

    With the Student-t similarity ``q_ij = 1 / (1 + ||z_i - z_j||^2)``, every positive pair
    ``(i, j)`` (``j`` a high-dimensional neighbour of ``i``) is pulled together by ``-log q_ij``
    and each of its negatives ``m`` is pushed away by ``-log(1 - q_im)``::

        loss = mean over (i, j) of [ -log q_ij - sum_m log(1 - q_im) ]

    ``-log(1 - q)`` is evaluated as ``log(1 + d^2) - log(d^2 + eps)`` with ``eps = 1e-3``, so a
    negative that coincides with its anchor costs a finite amount and no gradient.

    Args:
        z: Embedding, shape ``(N, d)`` (usually ``d = 2``); computed in fp32 at least.
        neighbors: Neighbour indices, shape ``(N, k)`` (from :func:`neighbor_graph`).
        negatives: Negative indices, shape ``(N, k, n_negatives)`` (from
            :func:`sample_negatives`).

    Returns:
        Scalar loss (differentiable with respect to ``z``).

    Raises:
        ValueError: If the shapes do not fit together.

    Example:
        >>> z = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
        >>> neighbors = torch.tensor([[1], [0], [1]])
        >>> negatives = torch.tensor([[[2]], [[2]], [[0]]])
        >>> round(neighbor_embedding_loss(z, neighbors, negatives).item(), 4)
        1.143
    """
    if z.dim() != 2:
        raise ValueError(f"z must have shape (N, d), got {tuple(z.shape)}")
    if neighbors.dim() != 2 or neighbors.shape[0] != z.shape[0]:
        raise ValueError(
            f"neighbors must have shape (N={z.shape[0]}, k), got {tuple(neighbors.shape)}"
        )
    if negatives.dim() != 3 or negatives.shape[:2] != neighbors.shape:
        raise ValueError(
            f"negatives must have shape {(*neighbors.shape, 'n_negatives')}, "
            f"got {tuple(negatives.shape)}"
        )
    z = z if z.dtype == torch.float64 else z.float()
    n, k = neighbors.shape
    # One gather for every pair (index_select's backward, index_add, is the cheap one), then
    # squared distances one coordinate at a time: reductions over a last axis of size 2 are slow.
    others = torch.cat((neighbors, negatives.reshape(n, -1)), dim=1)
    paired = z.index_select(0, others.reshape(-1)).view(n, -1, z.shape[1])
    d2 = sum((z[:, c : c + 1] - paired[..., c]).square() for c in range(z.shape[1]))
    # -log q = log(1 + d^2) on positives; -log(1 - q) = log(1 + d^2) - log(d^2 + eps) on negatives.
    return (torch.log1p(d2).sum() - torch.log(d2[:, k:] + _REPULSION_EPS).sum()) / (n * k)


def trustworthiness(
    high: Tensor,
    low: Tensor,
    k: int,
    metric: str = "euclidean",
    chunk_size: int | None = None,
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
        chunk_size: Rows per block for the ranks (``None``: from a 16 MiB budget).

    Returns:
        Scalar fp64 tensor in ``[0, 1]`` (1: every map neighbour is a true neighbour).

    Raises:
        ValueError: If the shapes disagree or ``k`` is out of range.

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0]])
        >>> trustworthiness(x, x, k=2).item()
        1.0
        >>> shuffled = torch.tensor([[0.0], [5.0], [1.0], [4.0], [2.0], [3.0]])
        >>> round(trustworthiness(x, shuffled, k=2).item(), 4)
        0.5667
    """
    high, low = _as_rows(high, "high"), _as_rows(low, "low")
    n = high.shape[0]
    if low.shape[0] != n:
        raise ValueError(f"high and low must have the same rows, got {n} and {low.shape[0]}")
    _check_k(k, n, (n - 1) // 2, "trustworthiness needs k < N / 2")
    low_neighbors = neighbor_graph(low, k, chunk_size=chunk_size).to(high.device)
    block = chunk_size or max(1, _BLOCK_ELEMENTS // n)
    penalty = torch.zeros((), dtype=torch.float64, device=high.device)
    positions = torch.arange(n, device=high.device).unsqueeze(0)
    for start in range(0, n, block):
        rows = torch.arange(start, min(start + block, n), device=high.device)
        distances = pairwise_distances(high[rows], high, metric=metric)
        distances[torch.arange(len(rows), device=high.device), rows] = torch.inf
        order = torch.argsort(distances, dim=1, stable=True)
        rank_of = torch.empty_like(order).scatter_(1, order, positions.expand_as(order))
        ranks = rank_of.gather(1, low_neighbors[rows]) + 1
        penalty += (ranks - k).clamp(min=0).sum()
    return 1.0 - penalty * (2.0 / (n * k * (2.0 * n - 3.0 * k - 1.0)))


def knn_recall(
    high: Tensor,
    low: Tensor,
    k: int,
    metric: str = "euclidean",
    chunk_size: int | None = None,
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
        ValueError: If the shapes disagree or ``k`` is out of range.

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [3.0], [10.0]])
        >>> knn_recall(x, x, k=1).item()
        1.0
        >>> knn_recall(x, torch.tensor([[0.0], [1.0], [9.0], [3.0]]), k=1).item()
        0.5
    """
    high, low = _as_rows(high, "high"), _as_rows(low, "low")
    n = high.shape[0]
    if low.shape[0] != n:
        raise ValueError(f"high and low must have the same rows, got {n} and {low.shape[0]}")
    _check_k(k, n, n - 1, "it must be at most N - 1")
    true = neighbor_graph(high, k, metric=metric, chunk_size=chunk_size)
    kept = neighbor_graph(low, k, chunk_size=chunk_size).to(true.device)
    shared = (true.unsqueeze(2) == kept.unsqueeze(1)).any(dim=2)
    return shared.float().mean()
