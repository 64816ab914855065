"""Weighted kNN class scores: the pure functions behind :class:`spt_knn.OnlineKNN`."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from spt_distance import METRICS, knn_search

WEIGHTINGS = ("inverse", "exp", "uniform")


def check_knn_arguments(
    *,
    k: int,
    temperature: float,
    distance_metric: str,
    weighting: str,
    chunk_size: int | None,
) -> None:
    """Validate the search and voting arguments shared by :func:`knn_predict` and ``OnlineKNN``.

    Raises:
        TypeError: If ``k`` or ``chunk_size`` is not an int, or ``temperature`` not a number.
        ValueError: If ``k <= 0``, ``temperature`` is not a finite positive number,
            ``chunk_size`` is neither ``-1``, ``None`` nor positive, or ``distance_metric`` /
            ``weighting`` is not one of the allowed names.

    Example:
        >>> check_knn_arguments(
        ...     k=0, temperature=0.07, distance_metric="euclidean", weighting="exp", chunk_size=-1
        ... )
        Traceback (most recent call last):
        ...
        ValueError: k must be a positive integer, got 0
    """
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be a positive integer, got {k!r}")
    if k <= 0:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a positive number, got {temperature!r}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)):
        raise TypeError(f"chunk_size must be -1, None or a positive integer, got {chunk_size!r}")
    if chunk_size is not None and chunk_size != -1 and chunk_size <= 0:
        raise ValueError(
            f"chunk_size must be -1 (one block), None (automatic) or a positive integer, "
            f"got {chunk_size!r}"
        )
    if distance_metric not in METRICS:
        raise ValueError(f"distance_metric must be one of {METRICS}, got {distance_metric!r}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")


def weighted_vote(
    distances: Tensor,
    labels: Tensor,
    num_classes: int,
    temperature: float = 0.07,
    weighting: str = "inverse",
) -> Tensor:
    """Class scores from each query's neighbours: a weighted vote, normalised per row.

    A neighbour at distance ``d`` votes for its label with weight ``1 / (d + temperature)``
    (``"inverse"``), ``exp(-d / temperature)`` (``"exp"``; with cosine distances this is the
    DINO / InstDisc rule, a softmax of the similarities over the temperature) or ``1``
    (``"uniform"``). The ``"exp"`` weights are computed relative to the row's nearest
    neighbour, which leaves the normalised scores unchanged and keeps far neighbours from
    underflowing to zero all at once.

    Args:
        distances: ``(B, k)`` distance of each query to its neighbours.
        labels: ``(B, k)`` integer label of each neighbour, ``< num_classes``. A neighbour with
            a negative label or a non-finite distance (padding) casts no vote.
        num_classes: Width of the result.
        temperature: Temperature of the ``"inverse"`` and ``"exp"`` weights (``> 0``).
        weighting: ``"inverse"``, ``"exp"`` or ``"uniform"``.

    Returns:
        ``(B, num_classes)`` scores in float32 (float64 for float64 distances) summing to 1 per
        row. A row without any voting neighbour (empty bank) is uniform, ``1 / num_classes``.

    Example:
        >>> distances = torch.tensor([[0.0, 1.0, 1.0]])
        >>> labels = torch.tensor([[2, 0, 0]])
        >>> weighted_vote(distances, labels, num_classes=3, weighting="uniform")
        tensor([[0.6667, 0.0000, 0.3333]])
        >>> weighted_vote(distances, labels, num_classes=3, temperature=1.0)
        tensor([[0.5000, 0.0000, 0.5000]])
    """
    dtype = torch.promote_types(distances.dtype, torch.float32)
    batch = distances.shape[0]
    if distances.shape[1] == 0:
        return torch.full(
            (batch, num_classes), 1.0 / num_classes, dtype=dtype, device=labels.device
        )
    d = distances.to(dtype)
    valid = (labels >= 0) & torch.isfinite(d)
    if weighting == "inverse":
        weights = 1.0 / (d + temperature)
    elif weighting == "exp":
        nearest = torch.where(valid, d, math.inf).amin(dim=1, keepdim=True)
        nearest = torch.where(torch.isfinite(nearest), nearest, 0.0)
        weights = torch.exp((nearest - d) / temperature)
    elif weighting == "uniform":
        weights = torch.ones_like(d)
    else:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    weights = torch.where(valid, weights, 0.0)
    scores = torch.zeros((batch, num_classes), dtype=dtype, device=d.device)
    scores.scatter_add_(1, labels.clamp(min=0).long(), weights)
    total = scores.sum(dim=1, keepdim=True)
    return torch.where(
        total > 0, scores / total.clamp_min(torch.finfo(dtype).tiny), 1.0 / num_classes
    )


def labelled_summary(labels: Tensor) -> Tensor:
    """``[number of labels >= 0, largest label]`` as one int64 tensor, without a host sync.

    The largest label is ``-1`` for an empty ``labels``. Reading both costs one sync.

    Example:
        >>> labelled_summary(torch.tensor([3, -1, 0])).tolist()
        [2, 3]
    """
    count = (labels >= 0).sum()
    top = labels.max() if labels.numel() else labels.new_tensor(-1)
    return torch.stack([count.long(), top.long()])


def finite_rows(features: Tensor) -> Tensor:
    """Which rows of the ``(N, D)`` ``features`` hold finite values only, as ``(N,)`` bools.

    Read from each row's smallest and largest value (a NaN or an infinity shows in one of
    them), so the only temporaries are ``2 N`` values, where an elementwise check allocates
    about 1.75 times ``features``. Nothing waits for the device.

    Example:
        >>> finite_rows(torch.tensor([[1.0, 2.0], [float("nan"), 0.0], [0.0, float("inf")]]))
        tensor([ True, False, False])
    """
    if features.shape[1] == 0:
        return torch.ones(features.shape[0], dtype=torch.bool, device=features.device)
    low, high = torch.aminmax(features, dim=1)
    return torch.isfinite(low) & torch.isfinite(high)


def keep_labelled(bank: Tensor, labels: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """The rows of ``bank`` whose label is ``>= 0``, in their original order.

    Args:
        bank: ``(N, D)`` rows.
        labels: ``(N,)`` labels; negative ones mark unlabelled rows.
        count: How many labels are ``>= 0`` (from :func:`labelled_summary`); passing it keeps
            the selection free of another host sync.

    Returns:
        ``(bank, labels)`` restricted to the ``count`` labelled rows (the inputs themselves
        when every row is labelled).

    Example:
        >>> labels = torch.tensor([1, -1, 0, -1])
        >>> bank, labels = keep_labelled(torch.arange(4.0)[:, None], labels, count=2)
        >>> bank.flatten().tolist(), labels.tolist()
        ([0.0, 2.0], [1, 0])
    """
    if count == labels.shape[0]:
        return bank, labels
    order = torch.argsort((labels < 0).to(torch.int8), stable=True)[:count]
    return bank.index_select(0, order), labels.index_select(0, order)


def check_labels(top: int, num_classes: int, where: str) -> None:
    """Raise if a label ``top`` (the largest seen in ``where``) does not fit ``num_classes``.

    Raises:
        ValueError: If ``top >= num_classes``; the message names the label and what to set.

    Example:
        >>> check_labels(9, num_classes=10, where="the bank")
        >>> check_labels(10, num_classes=10, where="the bank")
        Traceback (most recent call last):
        ...
        ValueError: the bank holds label 10, outside num_classes=10 ... at least 11
    """
    if top >= num_classes:
        raise ValueError(
            f"{where} holds label {top}, outside num_classes={num_classes} (labels must be "
            f"< num_classes); set num_classes to at least {top + 1}"
        )


_EXACT_BUDGET = 32 * 2**20
"""Bytes of float64 scratch that :func:`neighbour_distances` works in at a time."""


def neighbour_distances(
    queries: Tensor, bank: Tensor, indices: Tensor, distance_metric: str = "euclidean"
) -> Tensor:
    """Distance of each query to each of its neighbours, from the differences in float64.

    A pair's distance depends on nothing but the two rows: not on the batch it is in, nor on
    the shape of the matrix products that found it (which round differently). Cosine uses
    ``1 - cos``, with distance 1 to a zero vector.

    Args:
        queries: ``(B, D)`` rows.
        bank: ``(N, D)`` rows.
        indices: ``(B, k)`` rows of ``bank`` per query.
        distance_metric: One of ``spt_distance.METRICS``.

    Returns:
        ``(B, k)`` distances, float32 (float64 for float64 inputs), correctly rounded from
        float64 arithmetic.

    Example:
        >>> queries, bank = torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0], [1.0, 1.0]])
        >>> neighbour_distances(queries, bank, torch.tensor([[1, 0]]), "manhattan")
        tensor([[2., 7.]])
    """
    out_dtype = torch.promote_types(torch.promote_types(queries.dtype, bank.dtype), torch.float32)
    batch, k = indices.shape
    out = torch.empty((batch, k), dtype=out_dtype, device=queries.device)
    step = max(1, _EXACT_BUDGET // (16 * max(1, k * queries.shape[1])))
    for start in range(0, batch, step):
        q = queries[start : start + step].double().unsqueeze(1)
        x = bank[indices[start : start + step]].double()
        if distance_metric == "cosine":
            norms = q.norm(dim=-1) * x.norm(dim=-1)
            cos = torch.where(norms > 0, (q * x).sum(dim=-1) / norms, 0.0)
            d = (1 - cos).clamp_(0, 2)
        elif distance_metric == "manhattan":
            d = (q - x).abs_().sum(dim=-1)
        else:
            d = (q - x).square_().sum(dim=-1)
            if distance_metric == "euclidean":
                d = d.sqrt_()
        out[start : start + step] = d
    return out


def search_neighbours(
    queries: Tensor,
    bank: Tensor,
    labels: Tensor,
    k: int,
    distance_metric: str = "euclidean",
    chunk_size: int | None = -1,
) -> tuple[Tensor, Tensor]:
    """Distances and labels of the ``min(k, N)`` nearest bank rows of each query.

    :func:`spt_distance.knn_search` picks the neighbours (bf16/fp16 inputs are searched with
    float32 accumulation); their distances are then recomputed by
    :func:`neighbour_distances`, so a query's result does not depend on the other queries of
    its batch, and the neighbours are ordered by ``(distance, row)``.

    Returns:
        ``(distances, labels)``, both ``(B, min(k, N))``, nearest first.

    Example:
        >>> d, y = search_neighbours(
        ...     torch.tensor([[0.0], [5.0]]), torch.tensor([[1.0], [4.0], [9.0]]),
        ...     torch.tensor([7, 8, 9]), k=2,
        ... )
        >>> d.tolist(), y.tolist()
        ([[1.0, 4.0], [1.0, 4.0]], [[7, 8], [8, 7]])
    """
    k = min(k, bank.shape[0])
    if k == 0:
        empty = torch.empty((queries.shape[0], 0), device=queries.device)
        return empty, empty.long()
    # No cast here: knn_search upcasts a tile of the bank at a time (no copy of the bank).
    _, indices = knn_search(queries, bank, k, metric=distance_metric, chunk_size=chunk_size)
    indices = indices.sort(dim=1).values
    distances, order = neighbour_distances(queries, bank, indices, distance_metric).sort(
        dim=1, stable=True
    )
    return distances, labels[indices.gather(1, order)]


def knn_predict(
    queries: Tensor,
    bank: Tensor,
    bank_labels: Tensor,
    num_classes: int,
    k: int = 5,
    temperature: float = 0.07,
    distance_metric: str = "euclidean",
    weighting: str = "inverse",
    chunk_size: int | None = -1,
) -> Tensor:
    """Class scores of ``queries`` from a weighted vote of their k nearest labelled bank rows.

    Neighbours come from :func:`spt_distance.knn_search` (which streams over chunks of the
    bank when ``chunk_size`` asks for it) and vote as :func:`weighted_vote` describes. Bank
    rows with a negative label (unlabelled, e.g. ``-1``) are left out of the search; ``k`` is
    clipped to the number of labelled rows. The label check and the selection of labelled
    rows cost one host sync per call, whatever the batch size.

    Args:
        queries: ``(B, D)`` features; any float dtype (bf16/fp16 accumulate in float32).
        bank: ``(N, D)`` features.
        bank_labels: ``(N,)`` integer labels of the bank rows, ``< num_classes``.
        num_classes: Number of classes, the width of the result.
        k: Number of neighbours (``> 0``).
        temperature: Temperature of the ``"inverse"`` and ``"exp"`` weights (``> 0``).
        distance_metric: One of ``spt_distance.METRICS``.
        weighting: ``"inverse"`` (``1 / (d + T)``), ``"exp"`` (``exp(-d / T)``) or
            ``"uniform"``.
        chunk_size: Bank rows per block of the search; ``-1`` one block, ``None`` automatic.

    Returns:
        ``(B, num_classes)`` float32 scores summing to 1 per row; uniform rows when the bank
        holds no labelled row.

    Raises:
        ValueError: On invalid arguments, mismatched shapes, or a bank label
            ``>= num_classes`` (the message names the label and the ``num_classes`` to set).
        TypeError: If ``bank_labels`` is not an integer tensor.

    Example:
        >>> bank = torch.tensor([[0.0, 0.0], [0.0, 1.0], [5.0, 5.0], [5.0, 6.0]])
        >>> labels = torch.tensor([0, 0, 1, -1])
        >>> scores = knn_predict(torch.tensor([[0.0, 0.5], [5.0, 5.5]]), bank, labels, 2, k=2)
        >>> scores.argmax(dim=1).tolist()
        [0, 1]
        >>> scores.sum(dim=1).tolist()
        [1.0, 1.0]
    """
    check_knn_arguments(
        k=k,
        temperature=temperature,
        distance_metric=distance_metric,
        weighting=weighting,
        chunk_size=chunk_size,
    )
    check_num_classes(num_classes)
    if queries.dim() != 2 or bank.dim() != 2 or queries.shape[1] != bank.shape[1]:
        raise ValueError(
            f"queries (B, D) and bank (N, D) must be 2-D with the same D, got "
            f"{tuple(queries.shape)} and {tuple(bank.shape)}"
        )
    labels = bank_labels.reshape(-1)
    if labels.shape[0] != bank.shape[0]:
        raise ValueError(
            f"bank_labels must hold one label per bank row: {bank.shape[0]} rows, "
            f"{labels.shape[0]} labels"
        )
    if labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"bank_labels must be an integer tensor, got {labels.dtype}")
    count, top = labelled_summary(labels).tolist()
    check_labels(top, num_classes, "bank_labels")
    bank, labels = keep_labelled(bank, labels, count)
    distances, neighbours = search_neighbours(queries, bank, labels, k, distance_metric, chunk_size)
    return weighted_vote(distances, neighbours, num_classes, temperature, weighting)


def check_num_classes(num_classes: int) -> None:
    """Raise unless ``num_classes`` is a positive integer.

    Example:
        >>> check_num_classes(0)
        Traceback (most recent call last):
        ...
        ValueError: num_classes must be a positive integer, got 0
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise TypeError(f"num_classes must be a positive integer, got {num_classes!r}")
    if num_classes <= 0:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
