"""Argument checks shared by the package's public functions and classes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def check_int(value: Any, argument: str, minimum: int) -> int:
    """``value`` if it is an int >= ``minimum``, else a ``ValueError`` naming ``argument``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{argument} must be an int >= {minimum}, got {value!r}")
    return value


def check_input_dim(input_dim: Any) -> int | Sequence[int] | None:
    """``input_dim`` if it is ``None``, a positive int or a non-empty tuple/list of them."""
    dims = [input_dim] if isinstance(input_dim, int) else input_dim
    if input_dim is not None and (
        not isinstance(dims, (list, tuple))
        or not dims
        or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims)
    ):
        raise ValueError(
            f"input_dim must be None, a positive int or a tuple of them, got {input_dim!r}"
        )
    return input_dim
