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


def check_target_dim(target_dim: object, owner: str = "OnlineKNN") -> None:
    """Raise unless ``target_dim`` is ``None`` or ``1`` (one class label per row).

    Raises:
        TypeError: If it is neither ``None`` nor an int.
        ValueError: For any other int.

    Example:
        >>> check_target_dim(2, "OnlineKNN[name=knn]")
        Traceback (most recent call last):
        ...
        ValueError: OnlineKNN[name=knn]: target_dim must be None or 1 (one integer class label per row), got 2
    """  # noqa: E501
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
        ValueError: knn_predict: chunk_size must be -1 (one block), None (automatic) or a positive integer, got 0
    """  # noqa: E501
    if chunk_size is not None and (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, int)
        or (chunk_size != -1 and chunk_size <= 0)
    ):
        raise ValueError(
            f"{owner}: chunk_size must be -1 (one block), None (automatic) or a positive "
            f"integer, got {chunk_size!r}"
        )
    if distance_metric not in METRICS:
        raise ValueError(
            f"{owner}: distance_metric must be one of {METRICS}, got {distance_metric!r}"
        )
    if weighting not in WEIGHTINGS:
        raise ValueError(f"{owner}: weighting must be one of {WEIGHTINGS}, got {weighting!r}")
