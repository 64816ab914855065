"""Weighted kNN class scores: the functions behind :class:`spt_knn.OnlineKNN`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from spt_core.checks import positive_int
from spt_knn._checks import WEIGHTINGS, check_knn_arguments, two_dimensional
from spt_knn.bank import KNNBank, knn_bank
from spt_knn.sweep import Pair, check_temperature, parse_sweep


def knn_predict(
    queries: Tensor,
    bank: Tensor | KNNBank,
    bank_labels: Tensor | None = None,
    num_classes: int | None = None,
    k: int | Sequence[int] = 5,
    temperature: float | Sequence[float] = 0.07,
    distance_metric: str = "euclidean",
    weighting: str = "inverse",
    chunk_size: int | None = -1,
) -> Tensor | dict[Pair, Tensor]:
    """Class scores of ``queries`` from a weighted vote of their k nearest labelled bank rows.

    Neighbours come from :func:`spt_knn.knn_neighbours` (which streams over chunks of the
    bank when ``chunk_size`` asks for it) and vote as :func:`weighted_vote` describes. Bank
    rows with a negative label (unlabelled, e.g. ``-1``) or a non-finite feature are left out
    of the search; ``k`` is clipped to the rows left.

    ``bank`` is a tensor, with its ``bank_labels`` and ``num_classes``; reading which rows
    vote then costs one host sync per call, whatever the batch size. Or it is a
    :class:`KNNBank` made once by :func:`knn_bank` (which carries the labels and the class
    count), for scoring many batches against one bank without any host sync: what
    :class:`~spt_knn.OnlineKNN` does on every evaluation batch.

    A sweep, ``k`` and/or ``temperature`` given as a tuple or list, scores every pair
    ``(k, T)`` from one search at the largest ``k``: a smaller ``k`` votes with the first
    ``k`` of the distance-sorted neighbours, so each pair's scores equal those of a separate
    call with that ``k`` and ``T``, at the cost of one search and a few cheap votes. (Where two
    rows lie at exactly the same distance at the ``k``-th place, both choices are a correct
    ``k``-nearest set, and the sweep may keep the other one.)

    Args:
        queries: ``(B, D)`` features; any float dtype (bf16/fp16 accumulate in float32).
        bank: ``(N, D)`` features, or a :class:`KNNBank`.
        bank_labels: ``(N,)`` integer labels of the bank rows, ``< num_classes`` (a bank tensor
            only).
        num_classes: Number of classes, the width of the result (a bank tensor only).
        k: Number of neighbours (``> 0``), or a tuple/list of distinct ones (a sweep).
        temperature: Temperature of the ``"inverse"`` and ``"exp"`` weights (``> 0``), or a
            tuple/list of distinct ones (a sweep).
        distance_metric: One of ``spt_distance.METRICS``.
        weighting: ``"inverse"`` (``1 / (d + T)``), ``"exp"`` (``exp(-d / T)``) or
            ``"uniform"``.
        chunk_size: Bank rows per block of the search; ``-1`` one block, ``None`` automatic.

    Returns:
        ``(B, num_classes)`` float32 scores summing to 1 per row; uniform rows when the bank
        holds no labelled row. For a sweep, ``{(k, T): scores}`` for every pair, ``k``-major
        in the order given (``T`` as a float).

    Raises:
        ValueError: On arguments out of range (a ``k`` below 1, a ``temperature <= 0``, an
            empty or repeating sweep, an unknown ``distance_metric`` or ``weighting``, a
            ``chunk_size`` other than ``-1``, ``None`` or a positive int, of any type, as for
            :class:`~spt_knn.OnlineKNN`), mismatched shapes, or a bank label
            ``>= num_classes`` (the message names the label and the ``num_classes`` to set).
        TypeError: If ``queries`` or ``bank`` is not a tensor, ``bank_labels`` is not an
            integer tensor, ``k``/``num_classes`` not an int, ``temperature`` not a number,
            or the labels and class count are missing for a bank tensor (or given with a
            :class:`KNNBank`).

    Example:
        >>> bank = torch.tensor([[0.0, 0.0], [0.0, 1.0], [5.0, 5.0], [5.0, 6.0]])
        >>> labels = torch.tensor([0, 0, 1, -1])
        >>> scores = knn_predict(torch.tensor([[0.0, 0.5], [5.0, 5.5]]), bank, labels, 2, k=2)
        >>> scores.argmax(dim=1).tolist()
        [0, 1]
        >>> prepared = knn_bank(bank, labels, num_classes=2)
        >>> torch.equal(knn_predict(torch.tensor([[0.0, 0.5], [5.0, 5.5]]), prepared, k=2), scores)
        True
        >>> query = torch.tensor([[0.0, 0.5]])
        >>> sweep = knn_predict(query, prepared, k=(1, 2), temperature=(0.1, 1))
        >>> list(sweep)
        [(1, 0.1), (1, 1.0), (2, 0.1), (2, 1.0)]
    """
    sweep = parse_sweep(k, temperature)
    check_knn_arguments(distance_metric=distance_metric, weighting=weighting, chunk_size=chunk_size)
    if not isinstance(queries, Tensor):
        raise TypeError(
            f"knn_predict: queries must be a torch.Tensor, got {type(queries).__name__}"
        )
    if not isinstance(bank, (Tensor, KNNBank)):
        raise TypeError(
            f"knn_predict: bank must be a torch.Tensor or a KNNBank, got {type(bank).__name__}"
        )
    if isinstance(bank, KNNBank):
        if bank_labels is not None or num_classes is not None:
            raise TypeError(
                "knn_predict: a KNNBank carries its labels and num_classes; pass bank_labels "
                "and num_classes with a bank tensor only"
            )
    elif bank_labels is None or num_classes is None:
        raise TypeError("knn_predict: a bank tensor needs its bank_labels and num_classes")
    else:
        classes = positive_int(num_classes, "num_classes")
        if bank.dim() != 2:
            raise ValueError(f"knn_predict: bank must be 2-D (N, D), got {tuple(bank.shape)}")
        bank = knn_bank(bank, bank_labels, classes, where="bank_labels")
    width = bank.features.shape[1]
    if queries.dim() != 2 or (queries.shape[1] != width and bank.features.shape[0]):
        raise ValueError(
            f"queries (B, D) and bank (N, D) must be 2-D with the same D, got "
            f"{tuple(queries.shape)} and {tuple(bank.features.shape)}"
        )
    if bank.num_classes < 1:
        raise ValueError("knn_predict: the bank holds no label to infer num_classes from")
    distances, labels = bank.neighbours(queries, sweep.largest_k, distance_metric, chunk_size)
    scores = {
        (k, t): weighted_vote(distances[:, :k], labels[:, :k], bank.num_classes, t, weighting)
        for k, t in sweep.pairs
    }
    return scores if sweep.swept else scores[sweep.pairs[0]]


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

    Raises:
        TypeError: If ``distances`` or ``labels`` is not a tensor, ``labels`` not integers,
            ``num_classes`` not an int or ``temperature`` not a number.
        ValueError: If ``distances`` is not 2-D, ``labels`` not of its shape,
            ``num_classes < 1``, ``temperature`` is not a finite number ``> 0`` or
            ``weighting`` is not one of :data:`~spt_knn.WEIGHTINGS`.

    Example:
        >>> distances = torch.tensor([[0.0, 1.0, 1.0]])
        >>> labels = torch.tensor([[2, 0, 0]])
        >>> weighted_vote(distances, labels, num_classes=3, weighting="uniform")
        tensor([[0.6667, 0.0000, 0.3333]])
        >>> weighted_vote(distances, labels, num_classes=3, temperature=1.0)
        tensor([[0.5000, 0.0000, 0.5000]])
    """
    _check_votes(distances, labels)
    positive_int(num_classes, "weighted_vote: num_classes")
    check_temperature(temperature, "weighted_vote: temperature")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighted_vote: weighting must be one of {WEIGHTINGS}, got {weighting!r}")
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
    else:
        weights = torch.ones_like(d)
    weights = torch.where(valid, weights, 0.0)
    scores = torch.zeros((batch, num_classes), dtype=dtype, device=d.device)
    scores.scatter_add_(1, labels.clamp(min=0).long(), weights)
    total = scores.sum(dim=1, keepdim=True)
    return torch.where(
        total > 0, scores / total.clamp_min(torch.finfo(dtype).tiny), 1.0 / num_classes
    )


def _check_votes(distances: object, labels: object) -> None:
    """Types and shapes only: a vote runs on every evaluation batch."""
    shape = two_dimensional(distances, "weighted_vote: distances").shape
    if not isinstance(labels, Tensor):
        raise TypeError(
            f"weighted_vote: labels must be a torch.Tensor, got {type(labels).__name__}"
        )
    if labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"weighted_vote: labels must be an integer tensor, got {labels.dtype}")
    if labels.shape != shape:
        raise ValueError(
            f"weighted_vote: labels must have the shape of distances {tuple(shape)}, got "
            f"{tuple(labels.shape)}"
        )
