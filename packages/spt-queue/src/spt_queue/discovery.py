"""Finding the queue of a key among a Trainer's callbacks, and reading queues together."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Checkpoint
from torch import Tensor

from spt_core.checks import flat_dim, positive_int, string_key
from spt_queue.online_queue import OnlineQueue


def find_queue(trainer: Trainer, key: str) -> OnlineQueue | None:
    """The :class:`OnlineQueue` of ``key`` registered on ``trainer``, or ``None``.

    Args:
        trainer: The Trainer whose callbacks are searched (never changed).
        key: The queued key.

    Returns:
        The first queue of ``key`` in ``trainer.callbacks``, or ``None`` if there is none.

    Raises:
        TypeError: If ``trainer`` has no ``callbacks`` list (not a ``Trainer``) or ``key`` is
            not a string.
        ValueError: If ``key`` is empty.

    Example:
        >>> from spt_core.testing import quiet_trainer
        >>> trainer = quiet_trainer(callbacks=[OnlineQueue("embedding", 8)])
        >>> find_queue(trainer, "embedding").key, find_queue(trainer, "label")
        ('embedding', None)
    """
    _check_trainer_and_key("find_queue", trainer, key)
    for callback in trainer.callbacks:
        if isinstance(callback, OnlineQueue) and callback.key == key:
            return callback
    return None


def find_or_create_queue(
    trainer: Trainer,
    key: str,
    queue_length: int,
    dim: int | Sequence[int] | None = None,
    dtype: torch.dtype | None = None,
    *,
    previous: OnlineQueue | None = None,
    consumer: str | None = None,
    class_labels: bool = False,
) -> OnlineQueue:
    """Return the queue of ``key`` on ``trainer``, registering a new one if there is none.

    Discovery scans ``trainer.callbacks`` only: there is no registry, so a second Trainer
    in the same process starts clean. A found queue is shared: its capacity grows to
    ``queue_length`` if that is larger, and nothing else about it changes (it never gathers:
    each consumer gathers or shards what it reads).

    Args:
        trainer: The Trainer whose callbacks are searched (and extended: a new queue goes
            before its checkpoint callbacks, so a checkpoint written at a batch's end holds
            that batch's rows).
        key: The queued key.
        queue_length: Rows this consumer reads per rank.
        dim: Expected feature size (see :class:`OnlineQueue`).
        dtype: Storage dtype for a new queue.
        previous: A queue this consumer used with an earlier Trainer; when ``trainer`` has
            no queue for ``key`` it is registered again instead of a new, empty one.
        consumer: The asking callback's name (its ``state_key``), added to the queue's
            ``consumers`` so that the queue's errors (a missing key, a wrong size) name it.
        class_labels: Whether ``consumer`` reads the rows as integer class labels: every
            training batch is then checked to hold one integer per row (see
            :meth:`OnlineQueue.expect_class_labels`). Needs ``consumer``.

    Returns:
        The shared queue.

    Raises:
        TypeError: If an argument has the wrong type (``trainer`` not a ``Trainer``, ``key``
            or ``consumer`` not a string, ``queue_length`` not an int, ``dim`` not an int or
            shape, ``dtype`` not a ``torch.dtype``, ``previous`` not an ``OnlineQueue``,
            ``class_labels`` not a bool).
        ValueError: If ``key`` or ``consumer`` is empty, ``queue_length < 1``, a size of
            ``dim`` is below 1, an existing queue of ``key`` was declared with another
            ``dim``, or ``class_labels`` is set without a ``consumer``.

    Example:
        >>> from spt_core.testing import quiet_trainer
        >>> trainer = quiet_trainer()
        >>> queue = find_or_create_queue(trainer, "embedding", 8, consumer="OnlineKNN[name=a]")
        >>> shared = find_or_create_queue(trainer, "embedding", 32, consumer="LatentViz[name=b]")
        >>> shared is queue, queue.buffer.capacity, queue.consumers
        (True, 32, ['OnlineKNN[name=a]', 'LatentViz[name=b]'])
    """
    owner = "find_or_create_queue"
    _check_trainer_and_key(owner, trainer, key)
    positive_int(queue_length, f"{owner}: queue_length")
    flat_dim(dim, f"{owner}: dim")
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise TypeError(f"{owner}: dtype must be a torch.dtype or None, got {dtype!r}")
    if previous is not None and not isinstance(previous, OnlineQueue):
        raise TypeError(f"{owner}: previous must be an OnlineQueue or None, got {previous!r}")
    if consumer is not None:
        string_key(consumer, f"{owner}: consumer")
    if not isinstance(class_labels, bool):
        raise TypeError(f"{owner}: class_labels must be a bool, got {class_labels!r}")
    if class_labels and consumer is None:
        raise ValueError("class_labels=True needs the consumer's name (consumer=...)")
    queue = find_queue(trainer, key)
    if queue is None and previous is not None and previous.key == key:
        queue = previous
        _add_before_checkpoints(trainer, queue)
    if queue is None:
        queue = OnlineQueue(key, queue_length, dim=dim, dtype=dtype)
        _add_before_checkpoints(trainer, queue)
    else:
        wanted = flat_dim(dim)
        if wanted is not None and queue.dim is not None and wanted != queue.dim:
            raise ValueError(
                f"the queue of '{key}' holds rows of dim={queue.dim}, a consumer asks for "
                f"dim={wanted}; use one feature size per key"
            )
        queue.request(queue_length)
    if consumer is not None and consumer not in queue.consumers:
        queue.consumers.append(consumer)
    if class_labels:
        queue.expect_class_labels(consumer)
    return queue


def read_aligned(queues: Sequence[OnlineQueue], n: int, owner: str) -> list[Tensor]:
    """:meth:`OnlineQueue.read` of several queues that must hold the same rows (features and
    their labels, say): this rank's ``n`` most recent rows of each.

    Args:
        queues: The queues, read in this order.
        n: Rows to read from each.
        owner: Who reads (a ``state_key``), named in the error.

    Returns:
        One tensor per queue, with the same number of rows.

    Raises:
        TypeError: If ``queues`` is not a list or tuple of :class:`OnlineQueue`, or ``n`` not
            an int.
        ValueError: If ``n`` is negative.
        RuntimeError: If the queues did not receive the same rows (different append counts or
            lengths), which would pair a feature with another sample's label.

    Example:
        >>> features, labels = OnlineQueue("z", 4), OnlineQueue("y", 4)
        >>> features.append(torch.ones(3, 2)); labels.append(torch.arange(3))
        >>> [rows.shape[0] for rows in read_aligned([features, labels], 2, owner="knn")]
        [2, 2]
    """
    if not isinstance(queues, (list, tuple)) or not all(
        isinstance(queue, OnlineQueue) for queue in queues
    ):
        raise TypeError(f"{owner}: queues must be a list or tuple of OnlineQueue, got {queues!r}")
    rows = [queue.read(n) for queue in queues]
    if len({(q.appended, len(r)) for q, r in zip(queues, rows, strict=True)}) > 1:
        detail = ", ".join(
            f"'{q.key}': {q.appended} appended, {len(r)} read"
            for q, r in zip(queues, rows, strict=True)
        )
        raise RuntimeError(f"{owner}: its queues are not aligned ({detail})")
    return rows


def _check_trainer_and_key(owner: str, trainer: object, key: object) -> None:
    if not isinstance(getattr(trainer, "callbacks", None), list):  # a Trainer, or a stand-in
        raise TypeError(
            f"{owner}: trainer must be a lightning Trainer (with a callbacks list), got "
            f"{type(trainer).__name__}"
        )
    string_key(key, f"{owner}: key")


def _add_before_checkpoints(trainer: Trainer, queue: OnlineQueue) -> None:
    """Put ``queue`` before the Trainer's checkpoint callbacks, which Lightning runs last, so
    that a checkpoint written at the end of a batch holds the rows that batch appended."""
    callbacks = trainer.callbacks
    at = next((i for i, c in enumerate(callbacks) if isinstance(c, Checkpoint)), len(callbacks))
    callbacks.insert(at, queue)
