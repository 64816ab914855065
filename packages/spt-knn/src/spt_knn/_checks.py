"""The kNN-specific argument checks of the kNN functions and ``OnlineKNN`` (the checks every
package shares live in :mod:`spt_core.checks`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from spt_core.checks import positive_int, string_key
from spt_distance import METRICS

if TYPE_CHECKING:
    from spt_knn.bank import KNNBank
    from spt_knn.online_knn import OnlineKNN

WEIGHTINGS = ("inverse", "exp", "uniform")
"""The neighbour weightings: ``1 / (d + T)``, ``exp(-d / T)`` and ``1``."""

DISTRIBUTED_MODES = ("gather", "shard")
"""How ``OnlineKNN`` searches a bank whose rows are spread over the ranks."""

_CHUNK_SIZE = (
    "{owner}: chunk_size must be -1 (one block), None (automatic) or a positive integer, "
    "got {value!r}"
)


def check_target_dim(target_dim: object, owner: str = "OnlineKNN") -> None:
    """Raise unless ``target_dim`` is ``None`` or ``1`` (one class label per row).

    Raises:
        TypeError: If it is neither ``None`` nor an int.
        ValueError: For any other int.

    Example:
        >>> check_target_dim(2, "OnlineKNN[name=knn]")
        Traceback (most recent call last):
        ...
        ValueError: OnlineKNN[name=knn]: target_dim must be None or 1 (one integer ... got 2
    """
    message = (
        f"{owner}: target_dim must be None or 1 (one integer class label per row), "
        f"got {target_dim!r}"
    )
    if target_dim is None:
        return
    if isinstance(target_dim, bool) or not isinstance(target_dim, int):
        raise TypeError(message)
    if target_dim != 1:
        raise ValueError(message)


def check_callback_arguments(
    owner: str,
    *,
    input: object,
    target: object,
    queue_length: object,
    num_classes: object,
    target_dim: object,
    distributed: object,
) -> None:
    """Check ``OnlineKNN``'s keys, sizes and distributed mode; ``owner`` is its ``state_key``.

    Raises:
        TypeError: For a key that is not a string, a size that is not an int.
        ValueError: For an empty key, ``queue_length < 0``, ``num_classes < 1``, a
            ``target_dim`` other than 1 or an unknown ``distributed`` mode.
    """
    string_key(input, f"{owner}: input")
    string_key(target, f"{owner}: target")
    positive_int(queue_length, f"{owner}: queue_length", minimum=0)
    if num_classes is not None:
        positive_int(num_classes, f"{owner}: num_classes")
    check_target_dim(target_dim, owner)
    if distributed not in DISTRIBUTED_MODES:
        raise ValueError(
            f"{owner}: distributed must be one of {DISTRIBUTED_MODES}, got {distributed!r}"
        )


def check_width(queries: Tensor, bank: KNNBank, knn: OnlineKNN, which: str) -> None:
    """Raise if a batch's feature rows are not as wide as the bank's (``which``: ``""`` for
    the queue's, ``"clean"``).

    Raises:
        ValueError: Naming the callback, the key and both widths.
    """
    width = bank.features.shape[1]
    if queries.shape[1] != width and bank.features.shape[0]:
        held = "the clean bank holds" if which else "the queue holds"
        raise ValueError(
            f"{knn.state_key}: '{knn.input}' has {queries.shape[1]} features per row, "
            f"{held} rows of {width}"
        )


def check_knn_arguments(
    *,
    distance_metric: str,
    weighting: str,
    chunk_size: int | None,
    owner: str = "knn_predict",
) -> None:
    """Validate the search and voting arguments shared by `knn_predict` and ``OnlineKNN``
    (``k`` and ``temperature`` are checked by :func:`~spt_knn.parse_sweep`); every message
    starts with ``owner``.

    Raises:
        ValueError: If ``chunk_size`` is anything but ``-1``, ``None`` or a positive int (of
            any type, as the seed's ``OnlineKNN`` documents: "ValueError if chunk_size is
            invalid"), or ``distance_metric`` / ``weighting`` is not one of the allowed names.

    Example:
        >>> check_knn_arguments(distance_metric="euclidean", weighting="exp", chunk_size=0)
        Traceback (most recent call last):
        ...
        ValueError: knn_predict: chunk_size must be -1 (one block), None (automatic) ... got 0
    """
    if chunk_size is not None and (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, int)
        or (chunk_size != -1 and chunk_size <= 0)
    ):
        raise ValueError(_CHUNK_SIZE.format(owner=owner, value=chunk_size))
    _check_metric(distance_metric, owner)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"{owner}: weighting must be one of {WEIGHTINGS}, got {weighting!r}")


def check_search(
    owner: str,
    queries: object,
    bank: object,
    labels: object,
    k: object,
    distance_metric: object,
    chunk_size: object,
    names: tuple[str, str, str] = ("queries", "bank", "labels"),
) -> None:
    """Check a search of ``bank`` (``names``: how ``owner`` calls the three tensors) from its
    Python values and shapes only, so nothing waits for the device (a per-batch check).

    Raises:
        TypeError: If a tensor argument is not a tensor, the labels are not integers, ``k``
            or ``chunk_size`` not an int.
        ValueError: For tensors that are not ``(B, D)``, ``(N, D)`` (as wide as the queries
            unless ``N == 0``) and ``(N,)``, a negative ``k``, an unknown ``distance_metric``
            or a ``chunk_size`` that is not ``-1``, ``None`` or positive.

    Example:
        >>> import torch
        >>> rows = torch.zeros(4, 2)
        >>> check_search("knn_neighbours", rows, rows, torch.zeros(3).long(), 2, "cosine", -1)
        Traceback (most recent call last):
        ...
        ValueError: knn_neighbours: labels must have shape (4,) (one per row of bank), got (3,)
    """
    two_dimensional(queries, f"{owner}: {names[0]}")
    two_dimensional(bank, f"{owner}: {names[1]}")
    if bank.shape[0] and bank.shape[1] != queries.shape[1]:
        raise ValueError(
            f"{owner}: {names[0]} and {names[1]} must have as many features per row, got "
            f"{tuple(queries.shape)} and {tuple(bank.shape)}"
        )
    integer_rows(labels, bank.shape[0], f"{owner}: {names[2]}", names[1])
    positive_int(k, f"{owner}: k", minimum=0)
    _check_metric(distance_metric, owner)
    if chunk_size is None:
        return
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(_CHUNK_SIZE.format(owner=owner, value=chunk_size))
    if chunk_size != -1 and chunk_size < 1:
        raise ValueError(_CHUNK_SIZE.format(owner=owner, value=chunk_size))


def two_dimensional(value: object, argument: str) -> Tensor:
    """``value`` if it is a 2-D tensor.

    Raises:
        TypeError: If it is not a tensor.
        ValueError: If it is not 2-D.
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"{argument} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != 2:
        raise ValueError(f"{argument} must be a 2-D tensor, got shape {tuple(value.shape)}")
    return value


def integer_rows(value: object, rows: int, argument: str, of: str = "bank") -> Tensor:
    """``value`` if it is an integer tensor of shape ``(rows,)``, one value per row of ``of``.

    Raises:
        TypeError: If it is not a tensor of integers.
        ValueError: If its shape is not ``(rows,)``.
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"{argument} must be a torch.Tensor, got {type(value).__name__}")
    if value.is_floating_point() or value.is_complex():
        raise TypeError(f"{argument} must be an integer tensor, got {value.dtype}")
    if value.shape != (rows,):
        raise ValueError(
            f"{argument} must have shape ({rows},) (one per row of {of}), got {tuple(value.shape)}"
        )
    return value


def _check_metric(distance_metric: object, owner: str) -> None:
    if distance_metric not in METRICS:
        raise ValueError(
            f"{owner}: distance_metric must be one of {METRICS}, got {distance_metric!r}"
        )
