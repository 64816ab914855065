"""The clean bank of ``OnlineKNN``: a labelled loader embedded in eval mode, on a schedule."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor

from spt_core import distributed, embed_loader
from spt_knn._boards import CLEAN, QUEUE
from spt_knn._checks import check_positive_int
from spt_knn._rows import queue_rows
from spt_knn.bank import KNNBank, knn_bank
from spt_knn.sharded import agree_on_rounds

if TYPE_CHECKING:
    from spt_knn.online_knn import OnlineKNN


class CleanBank:
    """When to embed the clean loader, and the :class:`KNNBank` of its rows.

    Due at the first validation of every training epoch ``e`` with ``(e + 1)`` a multiple of
    ``every_n_epochs`` (with Lightning's default ``val_check_interval``, the validation at the
    end of epochs ``n - 1, 2n - 1, ...``), never in the sanity check; at every ``test`` and
    every ``validate`` outside ``fit``. The schedule depends on the epoch number only, plus
    the epoch last embedded (:meth:`state_dict`), so a resumed run embeds where the
    uninterrupted run would have.

    Raises:
        TypeError: If ``loader`` is not iterable, ``embed`` not callable, or
            ``every_n_epochs`` not an int.
        ValueError: If ``every_n_epochs < 1``.
    """

    def __init__(
        self,
        loader: Iterable[Any] | None,
        every_n_epochs: int,
        embed: Callable[[LightningModule, Any], Tensor] | None,
        owner: str,
    ) -> None:
        check_positive_int(every_n_epochs, "clean_every_n_epochs")
        if loader is not None and not isinstance(loader, Iterable):
            raise TypeError(
                f"{owner}: clean_loader must be an iterable of labelled batches (a DataLoader) "
                f"or None, got {type(loader).__name__}"
            )
        if embed is not None and not callable(embed):
            raise TypeError(
                f"{owner}: embed must be a function embed(pl_module, batch) -> features or "
                f"None, got {type(embed).__name__}"
            )
        self.loader, self.every_n_epochs, self.embed = loader, every_n_epochs, embed
        self.last_epoch = -1

    def due(self, trainer: Trainer, stage: str) -> bool:
        """Whether this evaluation embeds the clean loader (the same on every rank)."""
        if self.loader is None or trainer.sanity_checking:
            return False
        if stage == "test" or trainer.state.fn != "fit":
            return True
        epoch = trainer.current_epoch
        return (epoch + 1) % self.every_n_epochs == 0 and epoch != self.last_epoch

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
        every rank (gather), or this rank's as its shard (``sharded``). Every rank calls
        together (under DDP one small gather, then the bank's collectives)."""
        features, labels = embed_loader(
            pl_module, self.loader, input=input, target=target, embed=self.embed, owner=owner
        )
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.last_epoch = trainer.current_epoch
        if distributed.is_distributed():  # ranks without rows must agree on width and dtype
            shape = agree_on_rounds(features if len(features) else None, 0, pl_module.device)
            if not len(features):
                features = features.new_zeros((0, shape.dim))
            features = features.to(shape.dtype)
            if not sharded:
                features = distributed.gather_uneven(features)
                labels = distributed.gather_uneven(labels)
        return knn_bank(
            features, labels, num_classes, sharded=sharded,
            where=f"{owner}: the clean loader's '{target}'",
        )  # fmt: skip

    def state_dict(self) -> dict[str, int]:
        """The epoch last embedded (``-1``: none); the features are not kept."""
        return {"clean_embedded_epoch": self.last_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_epoch = int(state.get("clean_embedded_epoch", -1))


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


def read_banks(
    knn: OnlineKNN, trainer: Trainer, pl_module: LightningModule, stage: str, sharded: bool
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
    if knn.clean.due(trainer, stage):
        banks[CLEAN] = knn.clean.build(
            trainer, pl_module, input=knn.input, target=knn.target,
            num_classes=knn.num_classes, sharded=sharded, owner=knn.state_key,
        )  # fmt: skip
    return banks
