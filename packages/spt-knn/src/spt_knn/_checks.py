"""Argument checks shared by the kNN functions and ``OnlineKNN``."""

from __future__ import annotations

import math

from spt_distance import METRICS

WEIGHTINGS = ("inverse", "exp", "uniform")
"""The neighbour weightings: ``1 / (d + T)``, ``exp(-d / T)`` and ``1``."""

DISTRIBUTED_MODES = ("gather", "shard")
"""How ``OnlineKNN`` searches a bank whose rows are spread over the ranks."""


def check_positive_int(value: object, argument: str) -> int:
    """``value`` if it is a positive int.

    Raises:
        TypeError: If it is not an int (a bool is not one).
        ValueError: If it is below 1.

    Example:
        >>> check_positive_int(0, "k")
        Traceback (most recent call last):
        ...
        ValueError: k must be a positive integer, got 0
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{argument} must be a positive integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{argument} must be a positive integer, got {value!r}")
    return value


def check_knn_arguments(
    *,
    k: int,
    temperature: float,
    distance_metric: str,
    weighting: str,
    chunk_size: int | None,
) -> None:
    """Validate the search and voting arguments shared by `knn_predict` and ``OnlineKNN``.

    Raises:
        TypeError: If ``k`` or ``chunk_size`` is not an int, or ``temperature`` not a number.
        ValueError: If ``k <= 0``, ``temperature`` is not a finite positive number,
            ``chunk_size`` is neither ``-1``, ``None`` nor positive, or ``distance_metric`` /
            ``weighting`` is not one of the allowed names.

    Example:
        >>> check_knn_arguments(
        ...     k=3, temperature=0.0, distance_metric="euclidean", weighting="exp", chunk_size=-1
        ... )
        Traceback (most recent call last):
        ...
        ValueError: temperature must be a finite number > 0, got 0.0
    """
    check_positive_int(k, "k")
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
