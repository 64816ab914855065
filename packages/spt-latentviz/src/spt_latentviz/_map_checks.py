"""Argument checks of the functions that save, load and draw maps (numpy arrays and files)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from numbers import Real
from typing import Any

import numpy as np

from spt_latentviz._checks import positive_number

_NUMBERS = "biuf"  # numpy dtype kinds: bool, signed, unsigned, floating
_LABELS = _NUMBERS + "US"  # and strings


def checked_path(path: Any, argument: str) -> str | os.PathLike[str]:
    """``path`` if it is a str or a path without a NUL character.

    Example:
        >>> checked_path(3, "path")
        Traceback (most recent call last):
        ...
        TypeError: path must be a str or an os.PathLike path, got 3
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{argument} must be a str or an os.PathLike path, got {path!r}")
    if "\x00" in str(os.fspath(path)):
        raise ValueError(f"{argument} must not contain a NUL character, got {path!r}")
    return path


def checked_coordinates(coordinates: Any) -> np.ndarray:
    """``coordinates`` as an ``(N, 2)`` numeric array (its own dtype).

    Example:
        >>> checked_coordinates([[0, 1], [2, 3]]).shape
        (2, 2)
        >>> checked_coordinates([0.0, 1.0])
        Traceback (most recent call last):
        ...
        ValueError: coordinates must have shape (N, 2), got (2,)
    """
    array = _array(coordinates, "coordinates", "an array of numbers", _NUMBERS)
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"coordinates must have shape (N, 2), got {array.shape}")
    return array


def checked_labels(labels: Any, rows: int) -> np.ndarray | None:
    """``labels`` (``None``, or numbers or strings, one per point) as an array.

    Example:
        >>> checked_labels([object()], 1)
        Traceback (most recent call last):
        ...
        TypeError: labels must be None or an array of numbers or strings, got dtype object
    """
    if labels is None:
        return None
    array = _array(labels, "labels", "None or an array of numbers or strings", _LABELS)
    if array.shape != (rows,):
        raise ValueError(f"labels must have shape ({rows},), one per point, got {array.shape}")
    return array


def check_scalars(scalars: dict[str, Any]) -> None:
    """Raise unless every value of ``scalars`` is one number (a 0-d array is one).

    Example:
        >>> check_scalars({"epoch": 3, "score": np.float32(0.5)})
        >>> check_scalars({"epoch": [3, 4]})
        Traceback (most recent call last):
        ...
        ValueError: epoch must be one number, got shape (2,)
    """
    for key, value in scalars.items():
        array = _array(value, key, "a number", _NUMBERS)
        if array.ndim:
            raise ValueError(f"{key} must be one number, got shape {array.shape}")


def check_figure(title: Any, size: Any, dpi: Any, limits: Any) -> None:
    """Raise for a ``title``, figure ``size``, ``dpi`` or axis ``limits`` that
    :func:`~spt_latentviz.draw_map` cannot draw.

    Example:
        >>> check_figure("map", (7.0, 6.0), 100, (0, 1, 1, 0))
        Traceback (most recent call last):
        ...
        ValueError: limits must be (x_min, x_max, y_min, y_max) with x_min < x_max ... (0, 1, 1, 0)
    """
    if not isinstance(title, str):
        raise TypeError(f"title must be a str, got {title!r}")
    for value in _numbers(size, "size", 2, "(width, height) in inches"):
        positive_number(value, "size")
    if isinstance(dpi, bool) or not isinstance(dpi, int):
        raise TypeError(f"dpi must be an integer >= 1, got {dpi!r}")
    if dpi < 1:
        raise ValueError(f"dpi must be an integer >= 1, got {dpi!r}")
    if limits is None:
        return
    x_min, x_max, y_min, y_max = _numbers(limits, "limits", 4, "(x_min, x_max, y_min, y_max)")
    if not (all(map(math.isfinite, limits)) and x_min < x_max and y_min < y_max):
        raise ValueError(
            "limits must be (x_min, x_max, y_min, y_max) with x_min < x_max and "
            f"y_min < y_max, all finite, got {limits!r}"
        )


def checked_frames(frames: Any) -> list[str | os.PathLike[str]]:
    """``frames`` (paths, at least one) as a list.

    Example:
        >>> checked_frames("epoch_0.npz")
        Traceback (most recent call last):
        ...
        TypeError: frames must be a list or tuple of paths, got 'epoch_0.npz'
    """
    if isinstance(frames, (str, bytes, os.PathLike)) or not isinstance(frames, Iterable):
        raise TypeError(f"frames must be a list or tuple of paths, got {frames!r}")
    frames = list(frames)
    if not frames:
        raise ValueError("frames must hold at least one .npz file of save_map, got none")
    return [checked_path(frame, f"frames[{i}]") for i, frame in enumerate(frames)]


def _array(value: Any, argument: str, allowed: str, kinds: str) -> np.ndarray:
    try:
        array = np.asarray(value)
    except ValueError as error:  # a ragged list
        raise ValueError(f"{argument} must be {allowed} of one shape: {error}") from None
    except TypeError as error:  # e.g. a tensor on an accelerator
        raise TypeError(f"{argument} must be {allowed}: {error}") from None
    if array.dtype.kind not in kinds:
        raise TypeError(f"{argument} must be {allowed}, got dtype {array.dtype}")
    return array


def _numbers(value: Any, argument: str, length: int, form: str) -> tuple[float, ...]:
    if not isinstance(value, (tuple, list)) or any(
        isinstance(v, bool) or not isinstance(v, Real) for v in value
    ):
        raise TypeError(f"{argument} must be a tuple of {length} numbers {form}, got {value!r}")
    if len(value) != length:
        raise ValueError(f"{argument} must be a tuple of {length} numbers {form}, got {value!r}")
    return tuple(value)
