"""The clean bank of ``OnlineKNN``: a labelled loader embedded in eval mode, on a schedule."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor

from spt_core import distributed
from spt_embed import EvaluationSchedule, agree_features, embed_loader, gather_in_loader_order
from spt_knn._boards import CLEAN, QUEUE
from spt_knn._rows import queue_rows
from spt_knn.bank import KNNBank, knn_bank
from spt_knn.sweep import Sweep

if TYPE_CHECKING:
    from spt_knn.online_knn import OnlineKNN


class CleanBank:
    """When to embed the clean loader (an :class:`spt_embed.EvaluationSchedule`), and the
    :class:`KNNBank` of its rows.

    Due at the first validation of a fit (never the sanity check), then at the first
    validation at least ``every_n_epochs`` training epochs after the last embedding (epochs
    ``0, n, 2n, ...`` when every epoch validates), and at every ``validate``/``test`` outside
    ``fit``. The schedule starts over at every fit (:meth:`setup`) and its
    state is the epoch last embedded (:meth:`state_dict`), so a resumed run embeds where the
    uninterrupted run would have.

    Raises:
        TypeError: If ``loader`` is not iterable, ``clean_embed`` not callable, or
            ``every_n_epochs`` not an int.
        ValueError: If ``every_n_epochs < 1``, or ``queue_length=0`` without a loader.
    """

    def __init__(
        self,
        loader: Iterable[Any] | None,
        every_n_epochs: int,
        clean_embed: Callable[[LightningModule, Any], Tensor] | None,
        owner: str,
        queue_length: int,
    ) -> None:
        self.schedule = EvaluationSchedule(every_n_epochs, f"{owner}: clean_every_n_epochs")
        if loader is not None and not isinstance(loader, Iterable):
            raise TypeError(
                f"{owner}: clean_loader must be an iterable of labelled batches (a DataLoader) "
                f"or None, got {type(loader).__name__}"
            )
        if clean_embed is not None and not callable(clean_embed):
            raise TypeError(
                f"{owner}: clean_embed must be a function clean_embed(pl_module, batch) -> "
                f"features or None, got {type(clean_embed).__name__}"
            )
        if not queue_length and loader is None:
            raise ValueError(
                f"{owner}: queue_length=0 turns the queue bank off, which leaves nothing to "
                "evaluate without a clean_loader; pass queue_length >= 1"
            )
        self.loader, self.clean_embed = loader, clean_embed

    def due(self, trainer: Trainer) -> bool:
        """Whether this evaluation embeds the clean loader (the same on every rank)."""
        return self.loader is not None and self.schedule.due(trainer)

    def build(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        *,
        input: str,
        target: str,
        num_classes: int | None,
        sharded: bool,
        owner: str,
    ) -> KNNBank:
        """Embed this rank's share of the loader and make the bank: every rank's rows on
        every rank, in the loader's order (gather), or this rank's as its shard
        (``sharded``). Every rank calls together (under DDP small gathers, then the bank's
        collectives)."""
        features, labels, index = embed_loader(
            pl_module, self.loader, input=input, target=target, embed=self.clean_embed,
            owner=owner, with_index=True,
        )  # fmt: skip
        self.schedule.mark(trainer)
        if sharded:  # a rank without rows takes the others' width and dtype
            features = agree_features(features)
        else:
            features, labels = gather_in_loader_order(features, labels, index)
        # Rows in the loader's order (or keyed by it), so neighbours tie as on one process.
        return knn_bank(
            features, labels, num_classes, sharded=sharded, keys=index if sharded else None,
            where=f"{owner}: the clean loader's '{target}'",
        )  # fmt: skip

    def setup(self, stage: str) -> None:
        """At ``setup``: a fit starts the schedule over (a checkpoint then restores it)."""
        if stage == "fit":
            self.schedule.reset()

    def state_dict(self) -> dict[str, Any]:
        """``{"schedule": {"last_epoch": e}}`` (``None``: none yet); the features are not
        kept, they are embedded again when next due."""
        return {"schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.schedule.load_state_dict(state.get("schedule", {}))


def class_count(bank: KNNBank, sharded: bool) -> Tensor:
    """How many distinct classes the bank's rows hold, over every rank when ``sharded``
    (then one small collective; every rank calls together). A 0-d long tensor on the bank's
    device, read without a host sync."""
    width = max(bank.num_classes, 1)
    present = torch.zeros(width, dtype=torch.float32, device=bank.labels.device)
    present.index_fill_(0, bank.labels, 1.0)
    if sharded:
        distributed.all_reduce_max_(present)
    return present.sum().long()


def check_uniform_sweep(sweep: Sweep, weighting: str, temperature: Any, owner: str) -> None:
    """Refuse a sweep of several temperatures with ``weighting="uniform"``, which ignores the
    temperature (every pair of a ``k`` would log the same values).

    Raises:
        ValueError: Naming both arguments and the temperatures given.
    """
    if weighting == "uniform" and len(sweep.temperatures) > 1:
        raise ValueError(
            f"{owner}: weighting='uniform' ignores temperature, so temperature={temperature!r} "
            "would log identical values for every temperature; pass one temperature or "
            "weighting='inverse'/'exp'"
        )


def sweep_arguments(sweep: Sweep) -> dict[str, Any]:
    """The ``k`` and ``temperature`` of :func:`spt_knn.knn_predict` for the parsed ``sweep``
    (scalars when it is not swept): the pairs scored are always the callback's metric boards',
    whatever ``k``/``temperature`` attributes say later."""
    if sweep.swept:
        return {"k": sweep.ks, "temperature": sweep.temperatures}
    return {"k": sweep.ks[0], "temperature": sweep.temperatures[0]}


def read_banks(
    knn: OnlineKNN, trainer: Trainer, pl_module: LightningModule, sharded: bool
) -> dict[str, KNNBank]:
    """This evaluation's banks: the queue's (unless ``queue_length=0``), then the clean one
    when it is due. Every rank calls together (one host sync per bank; collectives under
    DDP)."""
    banks = {}
    if knn.queue_length:
        features, labels = queue_rows(
            knn._queues, knn.queue_length, knn.state_key, gather=not sharded,
            device=pl_module.device,
        )  # fmt: skip
        banks[QUEUE] = knn_bank(
            features, labels, knn.num_classes, sharded=sharded,
            where=f"{knn.state_key}: the queue of '{knn.target}'",
        )  # fmt: skip
    if knn.clean.due(trainer):
        banks[CLEAN] = knn.clean.build(
            trainer, pl_module, input=knn.input, target=knn.target,
            num_classes=knn.num_classes, sharded=sharded, owner=knn.state_key,
        )  # fmt: skip
    return banks
