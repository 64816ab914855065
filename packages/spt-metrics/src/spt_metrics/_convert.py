"""Pure conversions between step outputs, metric inputs and logged values."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["as_rows", "batch_size", "flatten_result", "scalar", "to_numpy"]

_NUMPY_UNSAFE = (torch.float16, torch.bfloat16)


def to_numpy(value: Any) -> Any:
    """A tensor as a numpy array on the CPU; anything else unchanged.

    16-bit floats become float32 (numpy has no bfloat16). This copies a device tensor to the
    host, so it runs once per batch only for metrics that need numpy.

    Example:
        >>> to_numpy(torch.tensor([1.5, 2.0], dtype=torch.bfloat16))
        array([1.5, 2. ], dtype=float32)
        >>> to_numpy(3)
        3
    """
    if not isinstance(value, Tensor):
        return value
    value = value.detach()
    if value.dtype in _NUMPY_UNSAFE:
        value = value.float()
    return value.cpu().numpy()


def batch_size(args: Sequence[Any], kwargs: Mapping[str, Any]) -> int:
    """Rows in a metric call: the length of the first argument that has rows, else 1.

    Example:
        >>> batch_size([0.5, torch.zeros(3, 2)], {"y": torch.zeros(3)})
        3
        >>> batch_size([], {"t": 0.1})
        1
    """
    for value in (*args, *kwargs.values()):
        shape = getattr(value, "shape", None)
        if shape is not None and len(shape) > 0:
            return int(shape[0])
        if isinstance(value, (list, tuple)):
            return len(value)
    return 1


def scalar(value: Any, *, name: str) -> float:
    """A metric function's result as a Python float.

    Args:
        value: A number, or a tensor or array with one element.
        name: The metric's name, for the error message.

    Raises:
        TypeError: For anything else (a vector, a dict, ``None``).

    Example:
        >>> scalar(np.float64(0.25), name="acc"), scalar(torch.tensor([2.0]), name="acc")
        (0.25, 2.0)
    """
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, Tensor) and value.numel() == 1:
        return float(value.detach().reshape(()).item())
    if isinstance(value, np.ndarray) and value.size == 1:
        return float(value.reshape(()))
    raise TypeError(
        f"metric {name!r} must return a number or a one-element tensor/array, got {value!r}"
    )


def flatten_result(name: str, value: Any) -> dict[str, Tensor]:
    """One logged value per scalar of a metric result.

    A scalar keeps ``name``; a dict (a ``MetricCollection`` or a wrapper returning one)
    gives ``{name}_{key}`` per entry, recursively.

    Raises:
        TypeError: If a result holds a tensor with more than one element; log an average
            instead (e.g. ``average="macro"``).

    Example:
        >>> flatten_result("cls", {"acc": torch.tensor(0.5), "f1": torch.tensor(0.25)})
        {'cls_acc': tensor(0.5000), 'cls_f1': tensor(0.2500)}
    """
    if isinstance(value, Mapping):
        flat: dict[str, Tensor] = {}
        for key, item in value.items():
            flat.update(flatten_result(f"{name}_{key}", item))
        return flat
    tensor = value if isinstance(value, Tensor) else torch.as_tensor(value)
    if tensor.numel() != 1:
        raise TypeError(
            f"metric {name!r} returned a tensor of shape {tuple(tensor.shape)}; only scalars "
            "are logged (use an averaged variant, e.g. average='macro')"
        )
    return {name: tensor.reshape(())}


def as_rows(value: Any, *, name: str, device: torch.device | None = None) -> Tensor:
    """A batch-first output as a detached tensor, to be concatenated at epoch end.

    Args:
        value: A tensor or numpy array with at least one dimension (rows first), or a list.
        name: Who asks, for the error message.
        device: Where to keep it (``cpu`` with ``compute_on_cpu=True``); ``None`` keeps the
            tensor where it is.

    Raises:
        ValueError: If the value has no row dimension (a scalar cannot be concatenated).

    Example:
        >>> as_rows(np.array([1, 2]), name="demo")
        tensor([1, 2])
    """
    tensor = value.detach() if isinstance(value, Tensor) else torch.as_tensor(value)
    if tensor.dim() == 0:
        raise ValueError(
            f"{name}: exact mode concatenates outputs over batches, but this output is a "
            f"scalar ({value!r}); return one row per sample or compute per step"
        )
    return tensor if device is None else tensor.to(device)
