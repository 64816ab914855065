"""A preallocated, fixed-capacity FIFO of tensor rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from spt_core.checks import positive_int


class RingBuffer:
    """Keeps the most recent ``capacity`` rows appended to it.

    Storage is allocated once (at construction when ``shape`` and ``dtype`` are given,
    otherwise at the first append, which then fixes them). :meth:`append` writes at most two
    slices in place: it costs O(rows), never copies the whole buffer and never waits on the
    device. Row counters are plain Python integers derived from tensor shapes, so nothing
    here synchronises with a GPU.

    Args:
        capacity: Number of rows kept.
        shape: Shape of one row: a tuple, or an int for rows of that many values (``()`` for
            scalars such as labels). ``None``: taken from the first append.
        dtype: Storage dtype. ``None``: the first append's dtype (int64 labels stay int64,
            bf16 features stay bf16).
        device: Storage device. ``None``: the first append's device.

    Raises:
        ValueError: If ``capacity`` is below 1, ``shape`` holds a negative size, or
            ``device`` names no device type.
        TypeError: If ``capacity`` is not an int, ``shape`` is neither ``None``, an int nor
            a sequence of ints, ``dtype`` not a ``torch.dtype`` or ``device`` neither a
            ``torch.device`` nor a str.

    Example:
        >>> buffer = RingBuffer(3)
        >>> buffer.append(torch.tensor([1, 2]))
        >>> buffer.append(torch.tensor([3, 4]))
        >>> len(buffer), buffer.last().tolist(), buffer.last(2).tolist()
        (3, [2, 3, 4], [3, 4])
        >>> buffer.dtype
        torch.int64
        >>> RingBuffer(5, shape=10).shape
        (10,)
    """

    def __init__(
        self,
        capacity: int,
        shape: int | Sequence[int] | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.capacity = positive_int(capacity, "capacity")
        self.shape = _row_shape(shape)
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtype must be a torch.dtype or None, got {dtype!r}")
        self.dtype = dtype
        self.device = None if device is None else _device(device)
        self._declared = (self.shape, self.dtype)
        self._data: Tensor | None = None
        self._head = 0
        self._size = 0
        self.appended = 0
        self._allocate_if_known()

    def _allocate_if_known(self) -> None:
        if self.shape is not None and self.dtype is not None:
            self._allocate(self.device or torch.device("cpu"))

    def _allocate(self, device: torch.device) -> None:
        self.device = device
        self._data = torch.empty((self.capacity, *self.shape), dtype=self.dtype, device=device)

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return (
            f"RingBuffer(capacity={self.capacity}, len={self._size}, shape={self.shape}, "
            f"dtype={self.dtype}, device={self.device})"
        )

    def append(self, rows: Tensor) -> None:
        """Append ``rows`` (shape ``(n, *shape)``); if ``n > capacity`` the newest rows win.

        Raises:
            ValueError: If the rows' shape does not match the buffer's row shape.
        """
        if rows.dim() == 0:
            raise ValueError("rows must have a leading batch dimension, got a 0-d tensor")
        if self.shape is None:
            self.shape = tuple(rows.shape[1:])
        elif tuple(rows.shape[1:]) != self.shape:
            raise ValueError(
                f"rows of shape {tuple(rows.shape[1:])} do not fit a buffer of rows "
                f"shaped {self.shape}"
            )
        if self.dtype is None:
            self.dtype = rows.dtype
        if self._data is None:
            self._allocate(self.device or rows.device)
        n = rows.shape[0]
        self.appended += n
        if n == 0:
            return
        if n >= self.capacity:
            self._data.copy_(rows[n - self.capacity :])
            self._head, self._size = 0, self.capacity
            return
        end = self._head + n
        if end <= self.capacity:
            self._data[self._head : end].copy_(rows)
        else:
            split = self.capacity - self._head
            self._data[self._head :].copy_(rows[:split])
            self._data[: end - self.capacity].copy_(rows[split:])
        self._head = end % self.capacity
        self._size = min(self._size + n, self.capacity)

    def last(self, n: int | None = None) -> Tensor:
        """A copy of the ``n`` most recent rows (all when ``None``), oldest first.

        Raises:
            TypeError: If ``n`` is neither ``None`` nor an int.
            ValueError: If ``n`` is negative.
        """
        n = self._size if n is None else min(positive_int(n, "n", 0), self._size)
        if self._data is None:
            return torch.empty((0, *(self.shape or ())), dtype=self.dtype, device=self.device)
        if n <= self._head:
            return self._data[self._head - n : self._head].clone()
        wrapped = n - self._head
        return torch.cat((self._data[self.capacity - wrapped :], self._data[: self._head]))

    def unordered(self) -> Tensor:
        """A view of every stored row in storage order (no copy; order is not recency)."""
        if self._data is None:
            return torch.empty((0, *(self.shape or ())), dtype=self.dtype, device=self.device)
        return self._data[: self._size]

    def clear(self) -> None:
        """Forget every row (storage, shape and dtype are kept)."""
        self._head = self._size = 0

    def resize(self, capacity: int) -> None:
        """Change the capacity, keeping the newest rows that fit."""
        if positive_int(capacity, "capacity") == self.capacity:
            return
        rows = self.last()
        self.capacity = capacity
        self._data = None
        self._head = self._size = 0
        self._allocate_if_known()
        appended = self.appended
        if len(rows):
            self.append(rows)
        self.appended = appended

    def to(self, device: torch.device | str) -> RingBuffer:
        """Move the storage to ``device`` (in place) and return ``self``."""
        self.device = torch.device(device)
        if self._data is not None:
            self._data = self._data.to(self.device)
        return self

    def state_dict(self) -> dict[str, Any]:
        """Rows (oldest first), capacity, row shape, dtype and the append counter."""
        return {
            "capacity": self.capacity,
            "rows": self.last(),
            "shape": self.shape,
            "dtype": self.dtype,
            "appended": self.appended,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; with a smaller capacity the newest rows win.

        The saved row shape and dtype replace this buffer's (whatever it held before): the
        rows come back exactly as they were saved. Only the capacity and the device stay. A
        state saved before its first append leaves the buffer as it was constructed.
        """
        rows: Tensor = state["rows"]
        self._head = self._size = 0
        self._data = None
        if state["shape"] is None or state["dtype"] is None:
            self.shape, self.dtype = self._declared
            self._allocate_if_known()
        else:
            self.shape, self.dtype = tuple(state["shape"]), state["dtype"]
            self._allocate(self.device or rows.device)
            self.append(rows.to(device=self.device, dtype=self.dtype))
        self.appended = int(state["appended"])


def _row_shape(shape: object) -> tuple[int, ...] | None:
    if shape is None:
        return None
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, Sequence) or any(
        isinstance(s, bool) or not isinstance(s, int) for s in shape
    ):
        raise TypeError(f"shape must be None, an int or a sequence of ints, got {shape!r}")
    if any(s < 0 for s in shape):
        raise ValueError(f"shape must hold sizes >= 0, got {shape!r}")
    return tuple(shape)


def _device(device: Any) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device must be a torch.device, a str or None, got {device!r}")
    try:
        return torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"device must name a torch device, got {device!r}: {error}") from None
