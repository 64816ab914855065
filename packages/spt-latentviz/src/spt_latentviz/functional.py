"""The math of LatentViz as pure functions: neighbour graph, negatives, loss, faithfulness.

:func:`projection_loss` is the map's training step that :class:`~spt_latentviz.LatentViz`
runs on its queue; the scores it logs are :func:`map_scores`. Both are built from the
smaller functions here, which a user can call on any tensors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from spt_core.checks import positive_int
from spt_latentviz._checks import check_map, checked_generator
from spt_latentviz._graph import neighbour_graph
from spt_latentviz.scores import knn_recall, map_scores, trustworthiness

__all__ = [
    "drop_non_finite",
    "knn_recall",
    "map_scores",
    "neighbour_embedding_loss",
    "neighbour_graph",
    "projection_loss",
    "sample_negatives",
    "trustworthiness",
]

# Keeps -log(1 - q) finite when a negative lands on (or next to) its anchor.
_REPULSION_EPS = 1e-3


def sample_negatives(
    num_points: int,
    neighbours: Tensor,
    n_negatives: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Uniformly drawn negatives: ``n_negatives`` point indices per positive pair.

    Args:
        num_points: Number of points to draw from.
        neighbours: The neighbour graph, shape ``(N, k)``; only its shape and device are used.
        n_negatives: Negatives per positive pair (>= 1).
        generator: Random source; drawing happens on its device, then moves to
            ``neighbours``'s device. ``None`` uses the global generator.

    Returns:
        int64 tensor of shape ``(N, k, n_negatives)`` with values in ``[0, num_points)``.

    Raises:
        TypeError: If ``num_points`` or ``n_negatives`` is not an int, ``neighbours`` not a
            tensor or ``generator`` neither a ``torch.Generator`` nor ``None``.
        ValueError: If ``num_points`` or ``n_negatives`` is below 1 or ``neighbours`` is not
            2-D.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> sample_negatives(10, torch.zeros(4, 3, dtype=torch.long), 5, g).shape
        torch.Size([4, 3, 5])
    """
    positive_int(num_points, "num_points")
    positive_int(n_negatives, "n_negatives")
    if not isinstance(neighbours, Tensor):
        raise TypeError(
            f"sample_negatives: neighbours must be a torch.Tensor, got {type(neighbours).__name__}"
        )
    if neighbours.dim() != 2:
        raise ValueError(
            f"sample_negatives: neighbours must have shape (N, k), got {tuple(neighbours.shape)}"
        )
    checked_generator(generator, "sample_negatives")
    device = generator.device if generator is not None else neighbours.device
    drawn = torch.randint(
        num_points, (*neighbours.shape, n_negatives), generator=generator, device=device
    )
    return drawn.to(neighbours.device, non_blocking=True)


def neighbour_embedding_loss(z: Tensor, neighbours: Tensor, negatives: Tensor) -> Tensor:
    """Negative-sampling cross-entropy of a low-dimensional embedding (UMAP/LargeVis style).

    With the Student-t similarity ``q_ij = 1 / (1 + ||z_i - z_j||^2)``, every positive pair
    ``(i, j)`` (``j`` a high-dimensional neighbour of ``i``) is pulled together by ``-log q_ij``
    and each of its negatives ``m`` is pushed away by ``-log(1 - q_im)``::

        loss = mean over (i, j) of [ -log q_ij - sum_m log(1 - q_im) ]

    ``-log(1 - q)`` is evaluated as ``log(1 + d^2) - log(d^2 + eps)`` with ``eps = 1e-3``, so a
    negative that coincides with its anchor costs a finite amount and no gradient.

    Args:
        z: Embedding, shape ``(N, d)`` (usually ``d = 2``); computed in fp32 at least.
        neighbours: Neighbour indices, shape ``(N, k)`` (from :func:`neighbour_graph`).
        negatives: Negative indices, shape ``(N, k, n_negatives)`` (from
            :func:`sample_negatives`).

    Returns:
        Scalar loss (differentiable with respect to ``z``).

    Raises:
        TypeError: If an argument is not a tensor.
        ValueError: If the shapes do not fit together.

    Example:
        >>> z = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
        >>> neighbours = torch.tensor([[1], [0], [1]])
        >>> negatives = torch.tensor([[[2]], [[2]], [[0]]])
        >>> round(neighbour_embedding_loss(z, neighbours, negatives).item(), 4)
        1.143
    """
    for argument, value in (("z", z), ("neighbours", neighbours), ("negatives", negatives)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{argument} must be a torch.Tensor, got {type(value).__name__}")
    if z.dim() != 2:
        raise ValueError(f"z must have shape (N, d), got {tuple(z.shape)}")
    if neighbours.dim() != 2 or neighbours.shape[0] != z.shape[0]:
        raise ValueError(
            f"neighbours must have shape (N={z.shape[0]}, k), got {tuple(neighbours.shape)}"
        )
    if negatives.dim() != 3 or negatives.shape[:2] != neighbours.shape:
        raise ValueError(
            f"negatives must have shape {(*neighbours.shape, 'n_negatives')}, "
            f"got {tuple(negatives.shape)}"
        )
    z = z if z.dtype == torch.float64 else z.float()
    n, k = neighbours.shape
    # One gather for every pair (index_select's backward, index_add, is the cheap one), then
    # squared distances one coordinate at a time: reductions over a last axis of size 2 are slow.
    others = torch.cat((neighbours, negatives.reshape(n, -1)), dim=1)
    paired = z.index_select(0, others.reshape(-1)).view(n, -1, z.shape[1])
    d2 = sum((z[:, c : c + 1] - paired[..., c]).square() for c in range(z.shape[1]))
    # -log q = log(1 + d^2) on positives; -log(1 - q) = log(1 + d^2) - log(d^2 + eps) on negatives.
    return (torch.log1p(d2).sum() - torch.log(d2[:, k:] + _REPULSION_EPS).sum()) / (n * k)


def projection_loss(
    projection: Callable[[Tensor], Tensor],
    rows: Tensor,
    neighbours: Tensor,
    n_negatives: int,
    generator: torch.Generator | None = None,
    *,
    owner: str = "projection_loss",
) -> Tensor:
    """The map's loss for one update: project ``rows``, draw negatives, score the embedding.

    The training step of :class:`~spt_latentviz.LatentViz` is this loss followed by a
    backward pass and an optimizer step.

    Args:
        projection: Maps ``(N, D)`` rows to ``(N, 2)`` points (usually an ``nn.Module``).
        rows: The points, shape ``(N, D)``.
        neighbours: Their neighbour graph, shape ``(N, k)`` (from :func:`neighbour_graph`).
        n_negatives: Negatives per neighbour pair (see :func:`sample_negatives`).
        generator: Random source of the negatives; ``None`` uses the global generator.
        owner: Who asks, named in the error message.

    Returns:
        Scalar :func:`neighbour_embedding_loss` (differentiable with respect to the
        projection's parameters).

    Raises:
        TypeError: If ``projection`` is not callable, ``rows`` or ``neighbours`` not a tensor,
            ``n_negatives`` not an int or ``generator`` neither a ``torch.Generator`` nor
            ``None``.
        ValueError: If ``rows`` is 0-d, the projection does not map the rows to shape
            ``(N, 2)``, ``neighbours`` is not ``(N, k)`` or ``n_negatives`` is below 1.

    Example:
        >>> rows = torch.tensor([[0.0, 0.0], [0.0, 1.0], [5.0, 5.0], [5.0, 6.0]])
        >>> g = torch.Generator().manual_seed(0)
        >>> loss = projection_loss(torch.nn.Identity(), rows, neighbour_graph(rows, 1), 2, g)
        >>> loss.shape, bool(loss > 0)
        (torch.Size([]), True)
    """
    if not callable(projection):
        raise TypeError(f"{owner}: projection must be callable (an nn.Module), got {projection!r}")
    if not isinstance(rows, Tensor):
        raise TypeError(f"{owner}: rows must be a torch.Tensor, got {type(rows).__name__}")
    if rows.dim() == 0:
        raise ValueError(f"{owner}: rows must have a row dimension, got a 0-d tensor")
    positive_int(n_negatives, f"{owner}: n_negatives")
    checked_generator(generator, owner)
    z = projection(rows)
    check_map(z, len(rows), owner)
    negatives = sample_negatives(len(rows), neighbours, n_negatives, generator)
    return neighbour_embedding_loss(z, neighbours, negatives)


def drop_non_finite(rows: Tensor) -> tuple[Tensor, Tensor | None]:
    """The rows of ``rows`` (shape ``(N, D)``) without a NaN or infinite value.

    One host sync decides whether any row goes.

    Args:
        rows: ``(N, D)`` rows.

    Returns:
        The finite rows and the boolean mask of the kept rows, or ``rows`` itself and
        ``None`` when every row is finite.

    Example:
        >>> kept, mask = drop_non_finite(torch.tensor([[1.0], [float("nan")], [2.0]]))
        >>> kept.tolist(), mask.tolist()
        ([[1.0], [2.0]], [True, False, True])
    """
    finite = torch.isfinite(rows).all(dim=1)
    if bool(finite.all()):
        return rows, None
    return rows[finite], finite
