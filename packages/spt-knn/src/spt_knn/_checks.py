"""The kNN-specific argument checks of the kNN functions and ``OnlineKNN`` (the checks every
package shares live in :mod:`spt_core.checks`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from spt_distance import METRICS

if TYPE_CHECKING:
    from spt_knn.bank import KNNBank
    from spt_knn.online_knn import OnlineKNN

WEIGHTINGS = ("inverse", "exp", "uniform")
"""The neighbour weightings: ``1 / (d + T)``, ``exp(-d / T)`` and ``1``."""

DISTRIBUTED_MODES = ("gather", "shard")
"""How ``OnlineKNN`` searches a bank whose rows are spread over the ranks."""


def check_target_dim(target_dim: object) -> None:
    """Raise unless ``target_dim`` is ``None`` or ``1`` (one class label per row).

    Raises:
        ValueError: For any other value.
    """
    if target_dim not in (None, 1) or isinstance(target_dim, bool):
        raise ValueError(
            f"target_dim must be None or 1 (one integer class label per row), got {target_dim!r}"
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
) -> None:
    """Validate the search and voting arguments shared by `knn_predict` and ``OnlineKNN``
    (``k`` and ``temperature`` are checked by :func:`~spt_knn.parse_sweep`).

    Raises:
        TypeError: If ``chunk_size`` is not an int.
        ValueError: If ``chunk_size`` is neither ``-1``, ``None`` nor positive, or
            ``distance_metric`` / ``weighting`` is not one of the allowed names.

    Example:
        >>> check_knn_arguments(distance_metric="euclidean", weighting="exp", chunk_size=0)
        Traceback (most recent call last):
        ...
        ValueError: chunk_size must be -1 (one block), None (automatic) or a positive integer, got 0
    """
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
