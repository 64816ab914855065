"""OnlineKNN: a weighted kNN classifier over a queue of recent training features."""

from __future__ import annotations

import math
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor
from torchmetrics import Metric, MetricCollection

from spt_core import (
    DataChecks,
    SPTCallback,
    StageMetrics,
    callbacks_metrics,
    distributed,
    lookup,
    named_metrics,
)
from spt_knn.functional import (
    check_knn_arguments,
    check_labels,
    check_num_classes,
    finite_rows,
    keep_labelled,
    labelled_summary,
    search_neighbours,
    weighted_vote,
)
from spt_knn.sharded import (
    RoundShape,
    agree_on_rounds,
    sharded_neighbours,
    sharded_neighbours_uneven,
)
from spt_queue import OnlineQueue, find_or_create_queue, read_aligned

DISTRIBUTED_MODES = ("gather", "shard")


@dataclass
class _Plan:
    """What an evaluation epoch needs, settled at its start on every rank."""

    skip: bool
    num_classes: int = 0
    k: int = 0
    deferred: bool = False
    """Shard mode under DDP with batch counts that differ between ranks (or are unknown):
    the rows are kept and scored together at the end of the epoch."""


class OnlineKNN(SPTCallback):
    """Weighted k-nearest-neighbour evaluation of the features a model produces as it trains.

    The callback finds or creates an :class:`spt_queue.OnlineQueue` for ``input`` (features)
    and one for ``target`` (labels); they fill from every training batch. On each validation
    (and test) batch the features are classified by a vote of their ``k`` nearest neighbours
    in the queue (see :func:`spt_knn.knn_predict`), the scores are written to
    ``batch["{name}_preds"]`` when the batch is a dict, and the metrics are updated. At the
    end of the epoch every metric is computed, logged as ``eval/{name}_{metric}`` (with
    Lightning's ``/dataloader_idx_{i}`` suffix when there are several validation loaders,
    each with its own metric copies) and reset. The copies live on the module's device and
    are exposed at ``callbacks_metrics(pl_module)[name]`` (keys ``"val/0"``, ``"test/0"``...).

    At the start of every evaluation epoch the bank is read once: rows with a negative label
    or a non-finite feature are left out (the latter with a warning), ``k`` is clipped to the
    labelled rows (with a warning), ``num_classes`` is checked (or inferred) and an empty
    queue skips the epoch with one log line. Nothing in the per-batch path waits on the
    device: the validation labels and features are checked at the end of the epoch, before
    anything is logged. A label ``>= num_classes`` raises a ``ValueError``; a loader in which
    some validation row had a non-finite feature logs nothing that epoch (its scores would
    mean nothing) and says so once. Rows whose label is negative (unlabelled) get scores but
    never reach the metrics. The bank is released when the epoch ends.

    Under DDP, ``distributed="gather"`` (default) searches a bank holding every rank's rows
    once, with no communication per batch. ``distributed="shard"`` keeps each rank's rows
    where they are: the validation features of all ranks are gathered, each rank searches
    its own shard and the candidates are merged, with the same results as ``"gather"`` and a
    per-rank memory that does not grow with the number of ranks. In both modes ranks may run
    different numbers of validation batches, or none: in shard mode a rank whose batches of
    a loader are done serves the other ranks' searches until they are done too. In shard
    mode no batch may hold more rows than the largest first batch of its loader over the
    ranks (true of every ``DataLoader``).

    Args:
        name: Unique identifier, used in logged names, the batch key and the checkpoint.
        input: Key of the features in the step outputs or the batch.
        target: Key of the integer class labels (one per row).
        queue_length: Training rows kept per rank.
        metrics: ``{name: metric}`` of torchmetrics ``Metric`` objects (a ``MetricCollection``,
            list or single metric is named automatically; ``None`` or ``{}`` for predictions
            only). They receive ``(scores (B, num_classes), target)`` for the labelled rows
            (see :meth:`spt_core.StageMetrics.update_labelled`). The callback and its
            search add no host sync per batch off the CPU, but torchmetrics' classification
            metrics do on CUDA (argument validation unless ``validate_args=False``;
            ``torch.bincount`` in ``update`` unless deterministic algorithms are on).
        input_dim: Feature size; a tuple/list is flattened to its product, and features of
            shape ``(B, *input_dim)`` are flattened to ``(B, prod)``. ``None`` accepts any.
        target_dim: Target size per row; only ``1`` (or ``None``) fits class labels.
        num_classes: Number of classes. ``None`` infers it once per epoch from the largest
            label in the queue, with a warning: inference undercounts while the queue has not
            seen every class (a validation label beyond it is then an error at the end of
            the epoch), and a metric built for more classes rejects the narrower scores.
        k: Neighbours per vote.
        temperature: Temperature of the distance weights (lower favours the nearest).
        chunk_size: Bank rows per block of the search; ``-1`` one block, ``None`` automatic.
        distance_metric: ``"euclidean"``, ``"squared_euclidean"``, ``"cosine"`` or
            ``"manhattan"``.
        verbose: See :class:`spt_core.SPTCallback`.
        weighting: ``"inverse"`` (``1 / (d + T)``, default), ``"exp"`` (``exp(-d / T)``) or
            ``"uniform"``.
        distributed: ``"gather"`` or ``"shard"`` (see above).

    Raises:
        ValueError: If ``k <= 0``, ``temperature <= 0``, ``chunk_size`` is invalid, or a name
            (metric, weighting, distributed mode) is not one of the allowed values.
        TypeError: If an argument has the wrong type, or a metric is not a torchmetrics
            ``Metric``.

    Example:
        >>> import torchmetrics
        >>> knn = OnlineKNN(
        ...     "knn", input="embedding", target="label", queue_length=1024,
        ...     metrics={"accuracy": torchmetrics.classification.MulticlassAccuracy(10)},
        ...     num_classes=10, k=20, distance_metric="cosine", weighting="exp",
        ... )
        >>> knn.state_key
        'OnlineKNN[name=knn]'
    """

    def __init__(
        self,
        name: str,
        input: str,
        target: str,
        queue_length: int,
        metrics: dict[str, Metric] | MetricCollection | None,
        input_dim: tuple[int, ...] | list[int] | int | None = None,
        target_dim: int | None = None,
        num_classes: int | None = None,
        k: int = 5,
        temperature: float = 0.07,
        chunk_size: int = -1,
        distance_metric: Literal[
            "euclidean", "squared_euclidean", "cosine", "manhattan"
        ] = "euclidean",
        verbose: bool | None = None,
        *,
        weighting: Literal["inverse", "exp", "uniform"] = "inverse",
        distributed: Literal["gather", "shard"] = "gather",
    ) -> None:
        super().__init__(name, verbose)
        for argument, key in (("input", input), ("target", target)):
            if not isinstance(key, str) or not key:
                raise TypeError(f"{argument} must be a non-empty string key, got {key!r}")
        if isinstance(queue_length, bool) or not isinstance(queue_length, int) or queue_length < 1:
            raise ValueError(f"queue_length must be a positive integer, got {queue_length!r}")
        check_knn_arguments(
            k=k,
            temperature=temperature,
            distance_metric=distance_metric,
            weighting=weighting,
            chunk_size=chunk_size,
        )
        if num_classes is not None:
            check_num_classes(num_classes)
        if target_dim is not None and (
            isinstance(target_dim, bool) or not isinstance(target_dim, int) or target_dim != 1
        ):
            raise ValueError(
                f"target_dim must be None or 1 (one integer class label per row), "
                f"got {target_dim!r}"
            )
        if distributed not in DISTRIBUTED_MODES:
            raise ValueError(f"distributed must be one of {DISTRIBUTED_MODES}, got {distributed!r}")
        self.input = input
        self.target = target
        self.queue_length = queue_length
        self.input_dim = _product(input_dim)
        self.target_dim = target_dim
        self.num_classes = num_classes
        self.k = k
        self.temperature = float(temperature)
        self.chunk_size = chunk_size
        self.distance_metric = distance_metric
        self.weighting = weighting
        self.distributed = distributed
        self.metrics = StageMetrics(self._metric_dict(metrics))
        self._queues: tuple[OnlineQueue, OnlineQueue] | None = None
        self._exposed: dict[str, dict[str, Any]] = {}
        self._checks = DataChecks()
        self._new_epoch()

    def _metric_dict(self, metrics: Any) -> dict[str, Metric]:
        if isinstance(metrics, MetricCollection):
            metrics = dict(metrics.items(keep_base=True))
        named = named_metrics(metrics, owner=self.state_key)
        for key, metric in named.items():
            if not isinstance(metric, Metric):
                raise TypeError(
                    f"{self.state_key}: metrics[{key!r}] must be a torchmetrics Metric "
                    f"instance, got {type(metric).__name__}"
                )
        return named

    def _new_epoch(self) -> None:
        self._bank: tuple[Tensor, Tensor] | None = None
        self._plan: _Plan | None = None
        self._rounds: dict[tuple[str, int], RoundShape] = {}  # shard rounds, per loader
        self._kept: dict[tuple[str, int], list[tuple[Tensor, Tensor]]] = {}  # deferred rows
        self._metrics_moved: set[tuple[str, int]] = set()  # copies on the module's device

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        previous = self._queues or (None, None)
        gather = self.distributed == "gather"
        self._queues = (
            find_or_create_queue(
                trainer, self.input, self.queue_length, self.input_dim,
                gather_distributed=gather, previous=previous[0], consumer=self.state_key,
            ),
            find_or_create_queue(
                trainer, self.target, self.queue_length, self.target_dim,
                gather_distributed=gather, previous=previous[1], consumer=self.state_key,
                class_labels=True,
            ),
        )  # fmt: skip
        callbacks_metrics(pl_module)[self.name] = self._exposed

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.info_if_no_validation(trainer, f"eval/{self.name}_*")

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        loaders = (
            trainer.num_sanity_val_batches if trainer.sanity_checking else trainer.num_val_batches
        )
        self._start_epoch("val", loaders, trainer, pl_module)

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start_epoch("test", trainer.num_test_batches, trainer, pl_module)

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Score the batch's features against the bank and update the metrics."""
        self._evaluate("val", trainer, pl_module, outputs, batch, dataloader_idx)

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._evaluate("test", trainer, pl_module, outputs, batch, dataloader_idx)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        loaders = (
            trainer.num_sanity_val_batches if trainer.sanity_checking else trainer.num_val_batches
        )
        self._end_epoch("val", len(loaders), trainer, pl_module)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._end_epoch("test", len(trainer.num_test_batches), trainer, pl_module)

    def _start_epoch(
        self,
        stage: str,
        batches: list[int | float],
        trainer: Trainer,
        pl_module: LightningModule,
    ) -> None:
        """Read the bank and settle ``k`` and the class count. Every rank runs this at the
        same hook whatever batches it will run: one host sync, and in shard mode under DDP
        one collective, which also compares the ranks' batch counts."""
        self._new_epoch()
        for queue in self._queues:
            queue.ensure_snapshots()  # the queues' own hooks run after this one
        features, labels = self._read_bank(pl_module.device)
        finite = finite_rows(features)  # a non-finite row is left out like an unlabelled one
        labels = torch.where(finite, labels, labels.new_tensor(-1))
        counts = [int(n) if math.isfinite(n) else -1 for n in batches]
        local = torch.cat(
            (
                labelled_summary(labels),
                (~finite).sum().view(1),
                torch.tensor(counts, dtype=torch.long, device=labels.device),
            )
        )
        shared = self.distributed == "shard" and distributed.is_distributed()
        per_rank = distributed.gather_uneven(local[None]).tolist() if shared else [local.tolist()]
        total = sum(r[0] for r in per_rank)
        bank_top = max(r[1] for r in per_rank)
        non_finite = sum(r[2] for r in per_rank)
        if non_finite:
            self.warn_once(
                trainer,
                "non-finite-bank",
                f"left out {non_finite} queue rows of '{self.input}' with non-finite values",
            )
        if total == 0:
            self.info_once(
                trainer,
                "empty",
                f"the queue of '{self.input}' holds no labelled rows yet (sanity check or "
                "first epoch); kNN evaluation skipped this epoch",
            )
            self._plan = _Plan(skip=True)
            return
        mine = per_rank[distributed.rank()] if shared else per_rank[0]
        self._bank = keep_labelled(features, labels, mine[0])
        if self.k > total:
            self.warn_once(
                trainer,
                "k",
                f"k={self.k} exceeds the {total} labelled rows of the queue; using k={total}",
            )
        same_batches = all(r[3:] == per_rank[0][3:] and -1 not in r[3:] for r in per_rank)
        if shared and not same_batches:
            self.info_once(
                trainer,
                "deferred",
                "the ranks run different (or unknown) numbers of evaluation batches "
                f"{[r[3:] for r in per_rank]} (per rank, per loader; -1: unknown): shard mode "
                "scores the rows at the end of the epoch, and does not write "
                f"batch['{self.name}_preds']",
            )
        num_classes = self._num_classes(trainer, bank_top)
        self._plan = _Plan(False, num_classes, min(self.k, total), shared and not same_batches)
        self.debug(f"{stage}: {total} labelled rows, {self._plan}")

    def _end_epoch(
        self, stage: str, num_dataloaders: int, trainer: Trainer, pl_module: LightningModule
    ) -> None:
        """Score the kept rows (deferred shard mode), log, and release this epoch's bank."""
        if self._plan is not None and self._plan.deferred:
            for idx in range(num_dataloaders):  # every rank, every loader, in order
                self._score_kept(stage, idx, trainer, pl_module)
        self._log_metrics(stage, num_dataloaders, trainer, pl_module)
        self._new_epoch()

    def _evaluate(
        self,
        stage: str,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        dataloader_idx: int,
    ) -> None:
        queries = self._tensor(self.input, outputs, batch).detach()
        queries = queries.flatten(1) if queries.dim() > 1 else queries.reshape(-1, 1)
        targets = self._tensor(self.target, outputs, batch).reshape(-1)
        if targets.shape[0] != queries.shape[0]:
            raise ValueError(
                f"{self.state_key}: '{self.input}' has {queries.shape[0]} rows but "
                f"'{self.target}' has {targets.shape[0]} labels"
            )
        if targets.is_floating_point() or targets.is_complex():
            raise TypeError(
                f"{self.state_key}: '{self.target}' must hold integer class labels, got "
                f"{targets.dtype}; convert them with .long() in the dataset or the step"
            )
        if self._plan is None or self._plan.skip:
            return
        bank, _ = self._bank
        if queries.shape[1] != bank.shape[1] and bank.shape[0]:
            raise ValueError(
                f"{self.state_key}: '{self.input}' has {queries.shape[1]} features per row, "
                f"the queue holds rows of {bank.shape[1]}"
            )
        if self.metrics:
            self._checks.update(stage, dataloader_idx, queries, targets)
        if self._plan.deferred:
            self._kept.setdefault((stage, dataloader_idx), []).append((queries, targets))
            return
        scores = self._predict(stage, dataloader_idx, queries)
        if isinstance(batch, MutableMapping):
            key = f"{self.name}_preds"
            if key in batch:
                self.warn_once(
                    trainer,
                    "preds-key",
                    f"the batch already holds '{key}'; it is overwritten with this callback's "
                    "predictions (rename the batch entry or the callback to keep both)",
                )
            batch[key] = scores
        self._update_metrics(stage, dataloader_idx, scores, targets, pl_module)

    def _update_metrics(
        self,
        stage: str,
        dataloader_idx: int,
        scores: Tensor,
        targets: Tensor,
        pl_module: LightningModule,
    ) -> None:
        if not self.metrics or targets.shape[0] == 0:  # some metrics fail on no rows
            return
        if (stage, dataloader_idx) not in self._metrics_moved:
            self.metrics.get(stage, dataloader_idx, pl_module.device)
            self._exposed.update(self.metrics.all_live())
            self._metrics_moved.add((stage, dataloader_idx))
        try:
            self.metrics.update_labelled(stage, dataloader_idx, scores, targets)
        except (RuntimeError, ValueError, IndexError):
            # A metric refused the batch: say so if a label is why (a sync on the way out).
            top = int(targets.max()) if targets.numel() else -1
            check_labels(top, self._plan.num_classes, self._batch_of_labels(stage))
            raise

    def _predict(self, stage: str, dataloader_idx: int, queries: Tensor) -> Tensor:
        """Scores ``(B, num_classes)`` of flattened ``queries`` against this epoch's bank."""
        bank, labels = self._bank
        plan = self._plan
        if self.distributed == "shard" and distributed.is_distributed():
            # Every rank runs the same batches: one round each, shaped by the first ones.
            shape = self._rounds.get((stage, dataloader_idx))
            if shape is None:
                shape = agree_on_rounds(queries, queries.shape[0], bank.device)
                self._rounds[(stage, dataloader_idx)] = shape
            if queries.shape[0] > shape.rows:
                raise ValueError(
                    f"{self.state_key}: a batch of {queries.shape[0]} rows exceeds the "
                    f"{shape.rows} rows of the largest first batch of this loader over the "
                    "ranks; in shard mode no later batch may be larger"
                )
            found = sharded_neighbours(
                queries.to(shape.dtype), bank, labels, plan.k, shape.rows,
                self.distance_metric, self.chunk_size,
            )  # fmt: skip
        else:
            found = search_neighbours(
                queries, bank, labels, plan.k, self.distance_metric, self.chunk_size
            )
        return weighted_vote(*found, plan.num_classes, self.temperature, self.weighting)

    def _score_kept(
        self, stage: str, dataloader_idx: int, trainer: Trainer, pl_module: LightningModule
    ) -> None:
        """Deferred shard mode: score this rank's rows of one loader in rounds that every
        rank runs together, and update the metrics batch by batch."""
        kept = self._kept.pop((stage, dataloader_idx), [])
        queries = torch.cat([q for q, _ in kept]) if kept else None
        rows = max((len(q) for q, _ in kept), default=0)
        bank, labels = self._bank
        found = sharded_neighbours_uneven(
            queries, bank, labels, self._plan.k, rows, self.distance_metric, self.chunk_size
        )
        scores = weighted_vote(*found, self._plan.num_classes, self.temperature, self.weighting)
        for part, (_, targets) in zip(scores.split([len(q) for q, _ in kept]), kept, strict=True):
            self._update_metrics(stage, dataloader_idx, part, targets, pl_module)

    def _tensor(self, key: str, outputs: Any, batch: Any) -> Tensor:
        value = lookup(key, outputs, batch, owner=self.state_key)
        if isinstance(value, Tensor):
            return value
        try:
            return torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as error:
            first = value[0] if isinstance(value, (list, tuple)) and value else value
            raise TypeError(
                f"{self.state_key}: '{key}' must be a tensor or a sequence of numbers, got "
                f"{type(value).__name__} of {type(first).__name__} ({first!r}); map strings "
                "to class indices in the dataset or the step"
            ) from error

    def _read_bank(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """This epoch's features and labels: every rank's (gather) or this rank's (shard)."""
        features_queue, labels_queue = self._queues
        local = self.distributed == "shard"
        if not (local and any(queue.gather_distributed for queue in self._queues)):
            features, labels = read_aligned(self._queues, self.queue_length, owner=self.state_key)
        else:
            # Another consumer makes the queues gather: read this rank's rows from the buffer.
            features = features_queue.buffer.last(self.queue_length)
            labels = labels_queue.buffer.last(self.queue_length)
            if (features_queue.buffer.appended, len(features)) != (
                labels_queue.buffer.appended,
                len(labels),
            ):
                raise RuntimeError(
                    f"{self.state_key}: its queues are not aligned ('{self.input}': "
                    f"{features_queue.buffer.appended} appended, '{self.target}': "
                    f"{labels_queue.buffer.appended} appended)"
                )
        rows = features.shape[0]
        features = features.reshape(rows, -1) if rows else features.reshape(0, 0)
        labels = labels.reshape(rows, -1) if rows else labels.reshape(0, 1)
        if labels.shape[1] != 1:
            raise ValueError(
                f"{self.state_key}: '{self.target}' must hold one class label per row, got "
                f"rows of {labels.shape[1]} values"
            )
        if rows and (labels.is_floating_point() or labels.is_complex()):
            raise TypeError(
                f"{self.state_key}: '{self.target}' must hold integer class labels, got "
                f"{labels.dtype}"
            )
        return features.to(device), labels[:, 0].to(device=device, dtype=torch.long)

    def _num_classes(self, trainer: Trainer, bank_top: int) -> int:
        if self.num_classes is not None:
            check_labels(
                bank_top, self.num_classes, f"{self.state_key}: the queue of '{self.target}'"
            )
            return self.num_classes
        inferred = bank_top + 1
        self.warn_once(
            trainer,
            "num_classes",
            f"num_classes=None: inferred {inferred} classes from the largest label in the "
            "queue. Pass num_classes explicitly: inference undercounts while the queue has "
            "not seen every class, and a metric built for more classes then fails on the "
            "narrower predictions.",
        )
        return inferred

    def _batch_of_labels(self, stage: str) -> str:
        where = "validation" if stage == "val" else "test"
        return f"{self.state_key}: a {where} batch of '{self.target}'"

    def _log_metrics(
        self, stage: str, num_dataloaders: int, trainer: Trainer, pl_module: LightningModule
    ) -> None:
        if not self.metrics:
            return
        where = "validation" if stage == "val" else "test"
        skip: set[int] = set()
        plan = self._plan
        for idx, (non_finite, top) in enumerate(
            self._checks.read(stage, num_dataloaders, pl_module.device)
        ):
            if plan is None or plan.skip:
                continue
            check_labels(top, plan.num_classes, self._batch_of_labels(stage))
            if non_finite:
                skip.add(idx)
                self.warn_once(
                    trainer,
                    f"non-finite-{stage}-{idx}",
                    f"{non_finite} {where} rows of '{self.input}' (loader {idx}) had non-finite "
                    f"values: their scores mean nothing, so eval/{self.name}_* is not logged "
                    "for this loader this epoch",
                )
        results = self.metrics.compute_and_reset(
            stage, num_dataloaders, pl_module.device, skip=skip
        )
        for key, value in results.items():
            if value.numel() != 1:
                self.warn_once(
                    trainer,
                    f"shape:{key}",
                    f"metric '{key}' computes a tensor of shape {tuple(value.shape)}; only "
                    "scalars are logged",
                )
                continue
            # torchmetrics already reduced the value across ranks inside compute().
            pl_module.log(
                f"eval/{self.name}_{key}",
                value.squeeze(),
                sync_dist=False,
                add_dataloader_idx=False,
            )


def _product(dim: int | Sequence[int] | None) -> int | None:
    if dim is None:
        return None
    dims = [dim] if isinstance(dim, int) else list(dim) if isinstance(dim, (tuple, list)) else None
    if not dims or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
        raise ValueError(
            f"input_dim must be None, a positive int or a tuple/list of them, got {dim!r}"
        )
    return math.prod(dims)
