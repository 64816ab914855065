"""OnlineQueue: a passive store of the most recent training values of one key, per rank."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor

from spt_core import SPTCallback, distributed, lookup
from spt_core.checks import flat_dim, positive_int, string_key
from spt_queue.ring_buffer import RingBuffer


class OnlineQueue(SPTCallback):
    """A passive store: appends this rank's values of ``key`` from every training batch.

    The value is looked up in the step outputs first, then in the batch, detached, and
    appended to a :class:`RingBuffer`. Consumers (kNN, LatentViz...) share one queue per key:
    each calls :meth:`request` with the number of rows it wants, the capacity is the largest
    request, and each reads its own most recent rows with :meth:`read`, the one read path.
    The queue never gathers and never changes for a consumer: under DDP a consumer gathers
    (or shards) what it read itself, through :mod:`spt_core.distributed`.

    A consumer that reads the rows as class labels says so with :meth:`expect_class_labels`;
    every training batch is then checked (without a host sync) to hold one integer per row.
    A value that is not a tensor and cannot become one (strings, for example) is a
    ``TypeError`` for any queue, naming the queue, its consumers and the key.

    The rows are callback state: :meth:`state_dict` holds this rank's (it never communicates),
    and a checkpoint holds every rank's once (gathered by :meth:`gather_checkpoint_state` while
    it is saved). They are never a buffer of the LightningModule.

    Args:
        key: Entry of the step outputs or batch to queue.
        queue_length: Rows kept per rank (grows to the largest consumer request).
        dim: Feature size; an int or a shape whose product is used. Rows are then flattened
            to ``(batch, prod(dim))`` and checked. ``None`` keeps rows as they come.
        dtype: Storage dtype; ``None`` keeps the first batch's dtype.
        verbose: See :class:`spt_core.SPTCallback`.

    Raises:
        ValueError: If ``queue_length`` or a size of ``dim`` is not positive, or ``key`` is
            empty.
        TypeError: If ``key`` is not a string, ``queue_length`` not an int, ``dim`` not an int
            or a sequence of ints, or ``dtype`` not a ``torch.dtype``. Messages name the
            queue's ``state_key`` and the argument.

    Example:
        >>> queue = OnlineQueue("embedding", queue_length=4, dim=2)
        >>> queue.append(torch.arange(10.0).reshape(5, 2))
        >>> queue.read(2).tolist(), queue.appended, queue.state_key
        ([[6.0, 7.0], [8.0, 9.0]], 5, 'OnlineQueue[name=embedding]')
    """

    unique_name = False

    def __init__(
        self,
        key: str,
        queue_length: int,
        *,
        dim: int | Sequence[int] | None = None,
        dtype: torch.dtype | None = None,
        verbose: bool | None = None,
    ) -> None:
        string_key(key, "OnlineQueue: key")
        super().__init__(name=key.replace("/", "."), verbose=verbose)
        positive_int(queue_length, f"{self.state_key}: queue_length")
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise TypeError(f"{self.state_key}: dtype must be a torch.dtype or None, got {dtype!r}")
        self.key = key
        self.dim = flat_dim(dim, f"{self.state_key}: dim")
        self.buffer = RingBuffer(queue_length, shape=self.dim, dtype=dtype)
        self.consumers: list[str] = []  # callbacks that read this queue, named in its errors
        self.class_label_consumers: list[str] = []

    @property
    def queue_length(self) -> int:
        """The capacity: the largest length requested."""
        return self.buffer.capacity

    @property
    def appended(self) -> int:
        """Rows this rank appended so far (with those of a resumed checkpoint)."""
        return self.buffer.appended

    def __len__(self) -> int:
        return len(self.buffer)

    def request(self, n: int) -> None:
        """Register a consumer that reads ``n`` rows; the capacity grows to the largest request."""
        if positive_int(n, "queue_length") > self.buffer.capacity:
            self.buffer.resize(n)

    def expect_class_labels(self, consumer: str) -> None:
        """Register ``consumer`` (a ``state_key``) as reading the rows as integer class labels.

        From then on a training batch whose ``key`` holds floating-point values raises a
        ``TypeError``, and one with several values per row a ``ValueError``, that names the
        consumer.
        """
        if consumer not in self.class_label_consumers:
            self.class_label_consumers.append(consumer)

    def read(self, n: int | None = None) -> Tensor:
        """A copy of this rank's ``n`` most recent rows (all when ``None``), oldest first.

        Raises:
            TypeError: If ``n`` is neither ``None`` nor an int.
            ValueError: If ``n`` is negative.
        """
        return self.buffer.last(n)

    def append(self, value: Any) -> None:
        """Check ``value`` (a tensor or a sequence of numbers) and append it as rows.

        Raises:
            TypeError: If it cannot become a tensor, or holds no integers for a class-label
                consumer.
            ValueError: If its rows do not have ``dim`` features, the rows' shape changed, or
                a row holds more than one value for a class-label consumer.
        """
        rows = self._as_rows(value)
        if self.class_label_consumers:
            self._check_class_labels(rows)
        if self.dim is not None:
            rows = rows.reshape(rows.shape[0], -1)
            if rows.shape[1] != self.dim:
                raise ValueError(
                    f"{self._owner()}: '{self.key}' has {rows.shape[1]} features per row, "
                    f"expected dim={self.dim}"
                )
        try:
            self.buffer.append(rows)
        except ValueError as error:
            raise ValueError(f"{self._owner()}: '{self.key}': {error}") from error

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        if self.buffer.device != pl_module.device:
            self.buffer.to(pl_module.device)
        self.append(lookup(self.key, outputs, batch, owner=self._owner()))

    def _as_rows(self, value: Any) -> Tensor:
        if isinstance(value, Tensor):
            return value.detach()
        try:
            return torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(
                f"{self._owner()}: '{self.key}' must be a tensor or a (nested) sequence of "
                f"numbers, got {_describe(value)}; map strings to numbers (e.g. class names "
                "to indices) in the dataset or the step"
            ) from error

    def _check_class_labels(self, rows: Tensor) -> None:
        """One integer per row, checked from the dtype and shape alone (no host sync)."""
        readers = ", ".join(self.class_label_consumers)
        if rows.is_floating_point() or rows.is_complex():
            raise TypeError(
                f"{self._owner()}: '{self.key}' holds {rows.dtype} values, but {readers} "
                "reads it as integer class labels; convert them with .long() in the dataset "
                "or the step (non-integral values such as soft labels are not classes)"
            )
        if rows.dim() == 0 or math.prod(rows.shape[1:]) != 1:
            raise ValueError(
                f"{self._owner()}: '{self.key}' must hold one integer class label per row for "
                f"{readers}, got a tensor of shape {tuple(rows.shape)}"
            )

    def _owner(self) -> str:
        """Who to name in an error: this queue and the callbacks that read it."""
        if not self.consumers:
            return self.state_key
        return f"{self.state_key} (filled for {', '.join(self.consumers)})"

    def state_dict(self) -> dict[str, Any]:
        """This rank's rows (oldest first), capacity, row shape, dtype and append counter."""
        state = self.buffer.state_dict()
        state["rows_per_rank"] = [len(state["rows"])]
        state["appended_per_rank"] = [state["appended"]]
        return state

    def gather_checkpoint_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """Every rank's rows, each once in rank order, with the row and append counts of each
        rank (a checkpoint is written by rank 0 alone; every rank calls this together)."""
        if not distributed.is_distributed():
            return state
        rows = state["rows"]
        counts = torch.tensor([[len(rows), state["appended"]]], device=rows.device)
        per_rank = distributed.gather_uneven(counts).tolist()
        return {
            **state,
            "rows": distributed.gather_uneven(rows),
            "rows_per_rank": [count for count, _ in per_rank],
            "appended_per_rank": [appended for _, appended in per_rank],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore this rank's rows; ranks of the writing run map onto ``rank % world_size``.

        The saved row shape and dtype win over what the buffer held before.

        Raises:
            ValueError: If the saved rows do not have the ``dim`` this queue was declared with.
        """
        shape = state_dict["shape"]
        if self.dim is not None and shape is not None and math.prod(shape) != self.dim:
            raise ValueError(
                f"{self._owner()}: the checkpoint holds rows of '{self.key}' shaped "
                f"{tuple(shape)}, this queue is declared with dim={self.dim}"
            )
        me, world = distributed.rank(), distributed.world_size()
        pieces = state_dict["rows"].split(state_dict["rows_per_rank"])
        mine = [p for r, p in enumerate(pieces) if r % world == me]
        rows = torch.cat(mine) if mine else state_dict["rows"][:0]
        appended = state_dict["appended_per_rank"]
        mine_appended = sum(a for r, a in enumerate(appended) if r % world == me)
        self.buffer.load_state_dict({**state_dict, "rows": rows, "appended": mine_appended})


def _describe(value: Any) -> str:
    """The type of ``value`` and, for a sequence, of its first item (``list of str ('cat')``)."""
    if isinstance(value, (list, tuple)) and value:
        return f"{type(value).__name__} of {type(value[0]).__name__} ({value[0]!r}, ...)"
    dtype = getattr(value, "dtype", None)
    return f"{type(value).__name__}" + (f" of dtype {dtype}" if dtype is not None else "")
