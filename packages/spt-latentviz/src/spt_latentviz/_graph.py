"""The neighbour graph both the map's loss and its faithfulness scores are built on."""

from __future__ import annotations

import torch
from torch import Tensor

from spt_distance import knn_search
from spt_latentviz._checks import as_rows, check_k

__all__ = ["neighbour_graph"]


def neighbour_graph(
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
        TypeError: If ``x`` is not a tensor or ``k`` not an int.
        ValueError: If ``x`` has fewer than 2 dimensions or ``k`` is out of range.

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
        >>> neighbour_graph(x, 2).tolist()
        [[1, 2], [0, 2], [1, 0], [2, 1]]
    """
    x = as_rows(x, "x")
    n = x.shape[0]
    check_k(k, n, n - 1, "it must be at most N - 1")
    _, indices = knn_search(x, x, min(k + 1, n), metric=metric, chunk_size=chunk_size)
    others = indices != torch.arange(n, device=indices.device).unsqueeze(1)
    # Stable sort moves each row's self-match (if found) to the end, keeping the order.
    order = torch.argsort((~others).to(torch.uint8), dim=1, stable=True)
    return indices.gather(1, order[:, :k])
