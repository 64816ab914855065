"""Lightning pieces for callback tests: a quiet Trainer, dict data, a tiny backbone, a logger."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.utils.data import DataLoader, Dataset


def quiet_trainer(**kwargs: Any) -> L.Trainer:
    """A one-device CPU Trainer, one epoch, with no logger, checkpoints, progress bar, model
    summary or sanity check. Every setting can be overridden.

    Args:
        **kwargs: ``lightning.Trainer`` arguments, replacing the defaults above.

    Returns:
        The Trainer.

    Example:
        >>> trainer = quiet_trainer(max_epochs=2)
        >>> trainer.max_epochs, trainer.logger
        (2, None)
    """
    settings: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
    }
    settings.update(kwargs)
    return L.Trainer(**settings)


class DictDataset(Dataset):
    """Rows of equally long tensors served as dicts, plus the row's ``index``.

    Args:
        **columns: Tensors with the same first dimension.

    Raises:
        ValueError: When the columns differ in length.

    Example:
        >>> data = DictDataset(x=torch.zeros(3, 2), label=torch.tensor([0, 1, 2]))
        >>> len(data), sorted(data[1]), data[1]["label"].item()
        (3, ['index', 'label', 'x'], 1)
    """

    def __init__(self, **columns: torch.Tensor) -> None:
        lengths = {name: len(column) for name, column in columns.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"DictDataset: columns must be equally long, got {lengths}")
        self.columns = columns
        self.length = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = {name: column[i] for name, column in self.columns.items()}
        row.setdefault("index", torch.tensor(i))
        return row


class ResumableLoader(DataLoader):
    """A ``DataLoader`` that Lightning resumes mid-epoch: its ``state_dict`` (which Lightning
    checkpoints) counts the batches handed out this pass, and a restored pass starts after
    them, as the uninterrupted pass would go on (for a loader whose order does not depend on
    the global random state); after a whole pass, the next one starts at the first batch.
    Without it a resumed epoch starts over.

    Example:
        >>> loader = ResumableLoader(DictDataset(x=torch.arange(6)), batch_size=2)
        >>> first = iter(loader); _ = next(first)
        >>> state = loader.state_dict()
        >>> restored = ResumableLoader(DictDataset(x=torch.arange(6)), batch_size=2)
        >>> restored.load_state_dict(state)
        >>> [batch["x"].tolist() for batch in restored]
        [[2, 3], [4, 5]]
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handed_out, self._start = 0, 0

    def __iter__(self) -> Iterator[Any]:
        start, self._start = self._start, 0
        self.handed_out = start
        for i, batch in enumerate(super().__iter__()):
            if i >= start:
                self.handed_out += 1
                yield batch

    def state_dict(self) -> dict[str, int]:
        """``{"next": batches handed out this pass}``, 0 after a whole pass (Lightning fetches
        none ahead from a loader with a length, so every one was trained on)."""
        return {"next": self.handed_out if self.handed_out < len(self) else 0}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Start the next pass after ``state["next"]`` batches."""
        self._start = state["next"]


class Backbone(L.LightningModule):
    """A tiny module whose steps return ``{**batch, feature_key: features, "loss": loss}``.

    Without ``width`` the features are ``batch[input_key]`` itself (exact results) and the
    loss only moves one spare weight; with ``width`` a linear encoder makes them and is
    trained to reconstruct the input. ``outputs(batch, module)`` replaces what is returned
    (``loss`` is added). Each stage's ``batch["index"]`` are kept in ``seen``.

    Args:
        dim: Input size (with ``width``).
        width: Embedding size; ``None`` returns the input as the embedding.
        input_key: Batch key of the input.
        feature_key: Output key of the embedding.
        shape: Shape each embedding row is reshaped to.
        dropout: Dropout on the embedding.
        manual: Use manual optimization.
        feature_dtype: dtype the embedding is returned in.
        detach: Return the embedding detached.
        outputs: ``outputs(batch, module) -> dict`` returned instead (plus ``loss``).
        lr: SGD learning rate.

    Example:
        >>> out = Backbone().training_step({"x": torch.ones(2, 3)}, 0)
        >>> sorted(out), out["embedding"].shape
        (['embedding', 'loss', 'x'], torch.Size([2, 3]))
    """

    def __init__(
        self,
        dim: int = 6,
        width: int | None = None,
        *,
        input_key: str = "x",
        feature_key: str = "embedding",
        shape: tuple[int, ...] | None = None,
        dropout: float = 0.0,
        manual: bool = False,
        feature_dtype: torch.dtype | None = None,
        detach: bool = False,
        outputs: Callable[[dict, Any], dict] | None = None,
        lr: float = 0.05,
    ) -> None:
        super().__init__()
        self.encoder = nn.Linear(dim, width) if width else None
        self.decoder = nn.Linear(width, dim) if width else None
        self.weight = nn.Parameter(torch.ones(()))
        self.dropout = nn.Dropout(dropout)
        self.automatic_optimization = not manual
        self.input_key, self.feature_key, self.shape = input_key, feature_key, shape
        self.feature_dtype, self.detach, self.outputs, self.lr = feature_dtype, detach, outputs, lr
        self.seen: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "test": []}

    def _embed(self, batch: dict) -> tuple[dict, torch.Tensor]:
        loss = self.weight.pow(2)
        if self.input_key not in batch:
            return dict(batch), loss
        x = batch[self.input_key]
        feature = x if self.encoder is None else self.dropout(self.encoder(x))
        if self.decoder is not None:
            loss = loss + (self.decoder(feature) - x).pow(2).mean()
        feature = feature.detach() if self.detach else feature
        if self.shape is not None:
            feature = feature.reshape(len(feature), *self.shape)
        if self.feature_dtype is not None:
            feature = feature.to(self.feature_dtype)
        return {**batch, self.feature_key: feature}, loss

    def _step(self, batch: dict) -> dict:
        out, loss = self._embed(batch)
        if self.outputs is not None:
            out = self.outputs(batch, self)
        out["loss"] = loss
        return out

    def _record(self, stage: str, batch: dict) -> None:
        if "index" in batch:
            self.seen[stage].append(batch["index"])

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        self._record("train", batch)
        out = self._step(batch)
        if not self.automatic_optimization:
            optimizer = self.optimizers()
            optimizer.zero_grad()
            self.manual_backward(out["loss"])
            optimizer.step()
            out["loss"] = out["loss"].detach()
        return out

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        self._record("val", batch)
        return self._step(batch)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        self._record("test", batch)
        return self._step(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class RecordingLogger(Logger):
    """Keeps every ``log_metrics`` call as ``(step, {name: value})`` in ``records``.

    Example:
        >>> logger = RecordingLogger()
        >>> logger.log_metrics({"loss": torch.tensor(0.5)}, step=3)
        >>> logger.records, logger.logged()
        ([(3, {'loss': 0.5})], {'loss': [0.5]})
    """

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Ignored."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Record ``metrics`` as logged at ``step``."""
        self.records.append((step, {name: float(value) for name, value in metrics.items()}))

    def values(self, name: str) -> list[float]:
        """Every value logged under ``name``, in order."""
        return [metrics[name] for _, metrics in self.records if name in metrics]

    def names(self) -> set[str]:
        """Every name logged."""
        return {name for _, metrics in self.records for name in metrics}

    def logged(self) -> dict[str, list[float]]:
        """``{name: every value logged under it, in order}``."""
        return {name: self.values(name) for name in sorted(self.names())}


class SyncFreeAccuracy:
    """Top-1 accuracy kept in two tensors and updated without a host sync, for tests of
    per-batch paths under `forbid_host_sync` (torchmetrics' classification metrics call
    ``bincount`` in ``update``). Rows whose target is ``ignore_index`` are not counted.

    Example:
        >>> metric = SyncFreeAccuracy()
        >>> metric.ignore_index = -1
        >>> scores = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
        >>> metric.update(scores, torch.tensor([0, 0, -1]))
        >>> metric.compute()
        tensor(0.5000)
    """

    def __init__(self) -> None:
        self.ignore_index: int | None = None
        self.reset()

    def reset(self) -> None:
        """Start counting again."""
        self.hits, self.rows = torch.zeros(()), torch.zeros(())

    def to(self, device: torch.device | str) -> SyncFreeAccuracy:
        """Move the counts to ``device``."""
        self.hits, self.rows = self.hits.to(device), self.rows.to(device)
        return self

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Count the rows of ``preds`` ``(N, C)`` whose arg-max is ``target`` ``(N,)``."""
        counted = torch.ones_like(target, dtype=torch.bool)
        if self.ignore_index is not None:
            counted = target != self.ignore_index
        self.hits = self.hits + ((preds.argmax(dim=1) == target) & counted).sum()
        self.rows = self.rows + counted.sum()

    def compute(self) -> torch.Tensor:
        """Correct rows over counted rows."""
        return self.hits / self.rows
