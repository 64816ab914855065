"""OnlineQueue: a callback that keeps the most recent training values of one key."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor

from spt_core import SPTCallback, distributed, lookup
from spt_queue.ring_buffer import RingBuffer


def _flat_dim(dim: int | Sequence[int] | None, argument: str = "dim") -> int | None:
    if dim is None:
        return None
    dims = [dim] if isinstance(dim, int) else list(dim)
    if not dims or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
        raise ValueError(f"{argument} must be a positive int or a tuple of them, got {dim!r}")
    return math.prod(dims)


class OnlineQueue(SPTCallback):
    """Appends ``key`` from every training batch to a ring buffer that consumers read.

    The value is looked up in the step outputs first, then in the batch, detached, and
    appended to :attr:`buffer`. Consumers (kNN, LatentViz...) share one queue per key: each
    calls :meth:`request` with the number of rows it wants, the capacity grows to the
    largest request, and each reads its own most recent rows through :meth:`snapshot`.

    Snapshots are taken once at the start of every validation and test epoch and released
    when that evaluation ends (after every callback's epoch-end hook), so that training never
    holds a copy of the queue. With ``gather_distributed=True`` a snapshot holds every rank's
    rows exactly once, in rank order; otherwise this rank's rows only.

    A consumer that reads the rows as class labels says so with :meth:`expect_class_labels`;
    every training batch is then checked (without a host sync) to hold one integer per row.
    A value that is not a tensor and cannot become one (strings, for example) is a
    ``TypeError`` for any queue, naming the queue, its consumers and the key.

    The buffer is callback state: it goes into checkpoints through :meth:`state_dict` (under
    DDP every rank's rows, each once) and is never a buffer of the LightningModule.

    Args:
        key: Entry of the step outputs or batch to queue.
        queue_length: Rows kept per rank (grows if a consumer requests more).
        dim: Feature size; an int or a shape whose product is used. Rows are then flattened
            to ``(batch, prod(dim))`` and checked. ``None`` keeps rows as they come.
        dtype: Storage dtype; ``None`` keeps the first batch's dtype.
        gather_distributed: Snapshots gather every rank's rows.
        verbose: See :class:`spt_core.SPTCallback`.

    Raises:
        ValueError: If ``queue_length`` or ``dim`` is not positive, or ``key`` is empty.
        TypeError: If ``dtype`` is not a ``torch.dtype``.

    Example:
        >>> queue = OnlineQueue("embedding", queue_length=4, dim=2)
        >>> queue.state_key
        'OnlineQueue[name=embedding]'
        >>> queue.buffer.capacity
        4
    """

    unique_name = False

    def __init__(
        self,
        key: str,
        queue_length: int,
        dim: int | Sequence[int] | None = None,
        dtype: torch.dtype | None = None,
        gather_distributed: bool = False,
        verbose: bool | None = None,
    ) -> None:
        if not isinstance(key, str) or not key:
            raise ValueError(f"key must be a non-empty string, got {key!r}")
        if isinstance(queue_length, bool) or not isinstance(queue_length, int) or queue_length < 1:
            raise ValueError(f"queue_length must be a positive integer, got {queue_length!r}")
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtype must be a torch.dtype or None, got {dtype!r}")
        super().__init__(name=key.replace("/", "."), verbose=verbose)
        self.key = key
        self.dim = _flat_dim(dim)
        self.gather_distributed = bool(gather_distributed)
        shape = None if self.dim is None else (self.dim,)
        self.buffer = RingBuffer(queue_length, shape=shape, dtype=dtype)
        self._requests: set[int] = {queue_length}
        self.consumers: list[str] = []  # callbacks that read this queue, named in its errors
        self.class_label_consumers: list[str] = []
        self._snapshots: dict[int, Tensor] = {}
        self._snapshots_taken = False  # since the last release
        self._snapshot_appended = 0

    @property
    def queue_length(self) -> int:
        return self.buffer.capacity

    def request(self, n: int) -> None:
        """Register a consumer that reads ``n`` rows; the capacity becomes the largest request."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"queue_length must be a positive integer, got {n!r}")
        self._requests.add(n)
        self.buffer.resize(max(self._requests))

    def expect_class_labels(self, consumer: str) -> None:
        """Register ``consumer`` (a ``state_key``) as reading the rows as integer class labels.

        From then on a training batch whose ``key`` is not one integer per row (floating-point
        values, several values per row) raises a ``TypeError`` that names the consumer.
        """
        if consumer not in self.class_label_consumers:
            self.class_label_consumers.append(consumer)

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        rows = self._as_rows(lookup(self.key, outputs, batch, owner=self._owner()))
        if self.class_label_consumers:
            self._check_class_labels(rows)
        if self.dim is not None:
            rows = rows.reshape(rows.shape[0], -1)
            if rows.shape[1] != self.dim:
                raise ValueError(
                    f"{self._owner()}: '{self.key}' has {rows.shape[1]} features per row, "
                    f"expected dim={self.dim}"
                )
        if self.buffer.device != pl_module.device:
            self.buffer.to(pl_module.device)
        try:
            self.buffer.append(rows)
        except ValueError as error:
            raise ValueError(f"{self._owner()}: '{self.key}': {error}") from error

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
            raise TypeError(
                f"{self._owner()}: '{self.key}' must hold one integer class label per row for "
                f"{readers}, got a tensor of shape {tuple(rows.shape)}"
            )

    def _owner(self) -> str:
        """Who to name in an error: this queue and the callbacks that read it."""
        if not self.consumers:
            return self.state_key
        return f"{self.state_key} (filled for {', '.join(self.consumers)})"

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.ensure_snapshots()

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.ensure_snapshots()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.release_snapshots()

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.release_snapshots()

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        self.release_snapshots()

    def ensure_snapshots(self) -> None:
        """Take the snapshots unless this evaluation already has them.

        A consumer whose epoch-start hook runs before the queue's (the queue is registered
        after it) calls this to read the snapshots at once; the queue's own hook then finds
        them taken. Every rank calls it at the same hooks, so the gather stays collective.
        """
        if not self._snapshots_taken:
            self.take_snapshots()

    def release_snapshots(self) -> None:
        """Drop the snapshots (called when an evaluation ends; their memory goes back as soon
        as no consumer holds them)."""
        self._snapshots = {}
        self._snapshots_taken = False

    def take_snapshots(self) -> None:
        """Freeze every requested view of the buffer (collective when gathering)."""
        self._snapshot_appended = self.buffer.appended
        self._snapshots = {}
        self._snapshots_taken = True
        for n in sorted(self._requests):
            rows = self.buffer.last(n)
            self._snapshots[n] = (
                distributed.gather_uneven(rows) if self.gather_distributed else rows
            )

    def snapshot(self, n: int | None = None) -> Tensor:
        """The rows frozen at the start of the current evaluation epoch (oldest first).

        Args:
            n: The consumer's request (rows per rank); ``None`` for the full queue.
        """
        n = self.queue_length if n is None else n
        if n not in self._snapshots:
            raise RuntimeError(
                f"{self.state_key}: no snapshot of {n} rows. Snapshots exist from the start "
                "of a validation/test epoch to the end of that evaluation: call "
                f"request({n}) before it starts and read them in the epoch's hooks, or call "
                "take_snapshots() outside a Trainer"
            )
        return self._snapshots[n]

    @property
    def snapshot_appended(self) -> int:
        """How many rows this rank had appended when the current snapshots were taken."""
        return self._snapshot_appended

    def state_dict(self) -> dict[str, Any]:
        rows = self.buffer.last()
        counts = torch.tensor([len(rows)])
        state = self.buffer.state_dict()
        if distributed.is_distributed():
            # Every rank calls state_dict while a checkpoint is dumped, only rank 0's is
            # written: gather every rank's rows so none is lost and none is duplicated.
            device = rows.device
            state["rows"] = distributed.gather_uneven(rows)
            counts = distributed.gather_uneven(counts.to(device)).cpu()
            appended = torch.tensor([self.buffer.appended], device=device)
            state["appended_per_rank"] = distributed.gather_uneven(appended).cpu().tolist()
        else:
            state["appended_per_rank"] = [self.buffer.appended]
        state["rows_per_rank"] = counts.tolist()
        return state

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
        counts = state_dict["rows_per_rank"]
        appended = state_dict["appended_per_rank"]
        me, world = distributed.rank(), distributed.world_size()
        pieces = state_dict["rows"].split(counts)
        mine = [p for r, p in enumerate(pieces) if r % world == me]
        rows = torch.cat(mine) if mine else state_dict["rows"][:0]
        mine_appended = sum(a for r, a in enumerate(appended) if r % world == me)
        self.buffer.load_state_dict({**state_dict, "rows": rows, "appended": mine_appended})


def _describe(value: Any) -> str:
    """The type of ``value`` and, for a sequence, of its first item (``list of str ('cat')``)."""
    if isinstance(value, (list, tuple)) and value:
        return f"{type(value).__name__} of {type(value[0]).__name__} ({value[0]!r}, ...)"
    dtype = getattr(value, "dtype", None)
    return f"{type(value).__name__}" + (f" of dtype {dtype}" if dtype is not None else "")
