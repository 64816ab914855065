"""Argument checks shared by `pairwise_distances` and `knn_search`."""

from __future__ import annotations

import torch

METRICS: tuple[str, ...] = ("euclidean", "squared_euclidean", "cosine", "manhattan")
"""The metric names every function of this package accepts."""

DEFAULT_MEMORY_BUDGET: int = 64 * 2**20
"""Bytes of scratch memory `knn_search` plans its chunks for when ``chunk_size=None``."""


def check_metric(metric: object) -> str:
    if not isinstance(metric, str) or metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return metric


def check_pair(x: object, y: object, x_name: str, y_name: str) -> None:
    """Both 2D floating-point tensors on one device with the same number of columns."""
    for name, t in ((x_name, x), (y_name, y)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(
                f"{name} must be a 2D tensor (rows, features), got shape {tuple(t.shape)}"
            )
        if not t.is_floating_point():
            raise TypeError(
                f"{name} must have a floating-point dtype (float16, bfloat16, float32 or "
                f"float64), got {t.dtype}"
            )
    assert isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"{x_name} and {y_name} must have the same number of features (columns), "
            f"got {x_name} {tuple(x.shape)} and {y_name} {tuple(y.shape)}"
        )
    if x.device != y.device:
        raise ValueError(
            f"{x_name} and {y_name} must be on the same device, got {x.device} and {y.device}"
        )


def check_count(value: object, argument: str, minimum: int) -> int:
    """``value`` if it is an int (not a bool) of at least ``minimum``.

    Raises:
        TypeError: If it is not an int.
        ValueError: If it is below ``minimum``.
    """
    value = _require_int(value, f"{argument} must be an int >= {minimum}")
    if value < minimum:
        raise ValueError(f"{argument} must be an int >= {minimum}, got {value}")
    return value


def check_k(k: object, n_keys: int) -> int:
    k = _require_int(k, "k must be an int")
    if not 1 <= k <= n_keys:
        raise ValueError(f"k must satisfy 1 <= k <= number of keys ({n_keys}), got k={k}")
    return k


def _require_int(value: object, what: str) -> int:
    """``value`` if it is an int (a bool is not); else a ``TypeError`` saying ``what``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what}, got {type(value).__name__} {value!r}")
    return value


def check_chunk_size(chunk_size: object) -> int | None:
    if chunk_size is None:
        return None
    chunk_size = _require_int(chunk_size, "chunk_size must be None, -1 or a positive int")
    if chunk_size == 0 or chunk_size < -1:
        raise ValueError(
            f"chunk_size must be None (from the memory budget), -1 (one block) or a positive "
            f"int, got {chunk_size}"
        )
    return chunk_size


def check_memory_budget(memory_budget: object) -> int:
    if memory_budget is None:
        return DEFAULT_MEMORY_BUDGET
    memory_budget = _require_int(
        memory_budget, "memory_budget must be None or a positive int (bytes)"
    )
    if memory_budget < 1:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget}")
    return memory_budget


def check_dtype(dtype: object) -> torch.dtype:
    """``dtype`` if it is a floating ``torch.dtype`` (what keys are searched in).

    Raises:
        TypeError: If it is not a ``torch.dtype``.
        ValueError: If it is not a floating one.
    """
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype}")
    return dtype


def check_device(device: object) -> torch.device:
    """``device`` (a ``torch.device`` or its name) as a ``torch.device``.

    Raises:
        TypeError: If it is neither.
        ValueError: If the name is no device type torch knows.
    """
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device must be a torch.device or a str, got {device!r}")
    try:
        return torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"device must name a torch device, got {device!r}: {error}") from None


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 when any input is float64, else float32 (fp16/bf16 are upcast)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
