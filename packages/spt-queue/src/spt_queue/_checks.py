"""Argument checks shared by the ring buffer and the queue."""

from __future__ import annotations

import math
from collections.abc import Sequence


def flat_dim(dim: int | Sequence[int] | None, argument: str = "dim") -> int | None:
    """The product of ``dim`` (an int or a shape), ``None`` for ``None``.

    Raises:
        TypeError: If ``dim`` is not an int, a sequence of ints or ``None``.
        ValueError: If a size is below 1 or the shape is empty.

    Example:
        >>> flat_dim((2, 3)), flat_dim(4), flat_dim(None)
        (6, 4, None)
    """
    if dim is None:
        return None
    dims = [dim] if isinstance(dim, int) else list(dim) if isinstance(dim, Sequence) else None
    if dims is None or any(isinstance(d, bool) or not isinstance(d, int) for d in dims):
        raise TypeError(f"{argument} must be None, an int or a tuple/list of ints, got {dim!r}")
    if not dims or any(d < 1 for d in dims):
        raise ValueError(f"{argument} must hold positive sizes, got {dim!r}")
    return math.prod(dims)


def check_count(value: object, argument: str) -> int:
    """``value`` if it is a positive int.

    Raises:
        TypeError: If it is not an int (a bool is not one).
        ValueError: If it is below 1.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{argument} must be a positive integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{argument} must be a positive integer, got {value!r}")
    return value
