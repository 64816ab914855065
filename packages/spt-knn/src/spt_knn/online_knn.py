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
    keep_labelled,
    labelled_summary,
    search_neighbours,
    weighted_vote,
)
from spt_knn.sharded import sharded_neighbours
from spt_queue import OnlineQueue, find_or_create_queue, read_aligned

DISTRIBUTED_MODES = ("gather", "shard")


@dataclass
class _Plan:
    """What one (stage, dataloader) needs for an epoch, settled at its first batch."""

    skip: bool
    num_classes: int = 0
    k: int = 0
    rows: int = 0


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

    Once per epoch (per dataloader) the bank's labels are read: rows with a negative label
    or a non-finite feature are left out (the latter with a warning), ``k`` is clipped to the
    labelled rows (with a warning), ``num_classes`` is checked (or inferred) and an empty
    queue skips the epoch with one log line. Nothing in the per-batch path waits on the
    device: the validation labels after the first batch and the validation features are
    checked at the end of the epoch, before anything is logged. A label ``>= num_classes``
    raises a ``ValueError``; a loader in which some validation row had a non-finite feature
    logs nothing that epoch (its scores would mean nothing) and says so once.

    Under DDP, ``distributed="gather"`` (default) searches a bank holding every rank's rows
    once. ``distributed="shard"`` keeps each rank's rows where they are: the validation
    features of all ranks are gathered, each rank searches its own shard and the candidates
    are merged, with the same results as ``"gather"`` and a per-rank memory that does not
    grow with the number of ranks. In shard mode, no batch of a dataloader may hold more rows
    than its first batch of the epoch (true of every ``DataLoader``).

    Args:
        name: Unique identifier, used in logged names, the batch key and the checkpoint.
        input: Key of the features in the step outputs or the batch.
        target: Key of the integer class labels (one per row).
        queue_length: Training rows kept per rank.
        metrics: ``{name: metric}`` of torchmetrics ``Metric`` objects (a ``MetricCollection``,
            list or single metric is named automatically; ``None`` or ``{}`` for predictions
            only). They receive ``(scores (B, num_classes), target)``. The callback and its
            search add no host sync per batch off the CPU, but torchmetrics' classification
            metrics do on CUDA (argument validation unless ``validate_args=False``;
            ``torch.bincount`` in ``update`` unless deterministic algorithms are on).
        input_dim: Feature size; a tuple/list is flattened to its product, and features of
            shape ``(B, *input_dim)`` are flattened to ``(B, prod)``. ``None`` accepts any.
        target_dim: Target size per row; only ``1`` (or ``None``) fits class labels.
        num_classes: Number of classes. ``None`` infers it once per epoch from the largest
            label in the queue and in the first batch of each validation loader, with a
            warning: inference undercounts while the queue has not seen every class, and a
            metric built for more classes then rejects the narrower scores.
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
        self._bank_non_finite = torch.zeros((), dtype=torch.long)
        self._bank_compacted = False
        self._plans: dict[tuple[str, int], _Plan] = {}

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
            ),
        )  # fmt: skip
        callbacks_metrics(pl_module)[self.name] = self._exposed

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.info_if_no_validation(trainer, f"eval/{self.name}_*")

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._new_epoch()

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._new_epoch()

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
        self._log_metrics("val", len(loaders), trainer, pl_module)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log_metrics("test", len(trainer.num_test_batches), trainer, pl_module)

    def _predict(self, queries: Tensor, plan: _Plan) -> Tensor:
        """Scores ``(B, num_classes)`` of flattened ``queries`` against this epoch's bank."""
        bank, labels = self._bank
        if self.distributed == "shard":
            found = sharded_neighbours(
                queries, bank, labels, plan.k, plan.rows, self.distance_metric, self.chunk_size
            )
        else:
            found = search_neighbours(
                queries, bank, labels, plan.k, self.distance_metric, self.chunk_size
            )
        return weighted_vote(*found, plan.num_classes, self.temperature, self.weighting)

    def _evaluate(
        self,
        stage: str,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        dataloader_idx: int,
    ) -> None:
        queries = _tensor(lookup(self.input, outputs, batch, owner=self.state_key)).detach()
        queries = queries.reshape(queries.shape[0], -1)
        targets = _tensor(lookup(self.target, outputs, batch, owner=self.state_key)).reshape(-1)
        if targets.shape[0] != queries.shape[0]:
            raise ValueError(
                f"{self.state_key}: '{self.input}' has {queries.shape[0]} rows but "
                f"'{self.target}' has {targets.shape[0]} labels"
            )
        plan = self._plans.get((stage, dataloader_idx))
        if plan is None:
            plan = self._plan(stage, dataloader_idx, trainer, pl_module, queries, targets)
            self._plans[(stage, dataloader_idx)] = plan
        if plan.skip:
            return
        if queries.shape[1] != self._bank[0].shape[1] and self._bank[0].shape[0]:
            raise ValueError(
                f"{self.state_key}: '{self.input}' has {queries.shape[1]} features per row, "
                f"the queue holds rows of {self._bank[0].shape[1]}"
            )
        scores = self._predict(queries, plan)
        if isinstance(batch, MutableMapping):
            batch[f"{self.name}_preds"] = scores
        if self.metrics:
            self._checks.update(stage, dataloader_idx, queries, targets)
            try:
                self.metrics.update(stage, dataloader_idx, scores, targets)
            except (RuntimeError, ValueError, IndexError):
                # A metric refused the batch: say so if a label is why (a sync on the way out).
                top = int(targets.max()) if targets.numel() else -1
                check_labels(top, plan.num_classes, self._batch_of_labels(stage))
                raise

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

    def _plan(
        self,
        stage: str,
        dataloader_idx: int,
        trainer: Trainer,
        pl_module: LightningModule,
        queries: Tensor,
        targets: Tensor,
    ) -> _Plan:
        """Settle k, the class count and the query rows for the epoch: one host sync."""
        if self._bank is None:
            features, labels = self._read_bank(pl_module.device)
            # A row with a non-finite feature is left out like an unlabelled one.
            finite = torch.isfinite(features).all(dim=1)
            self._bank = features, torch.where(finite, labels, labels.new_tensor(-1))
            self._bank_non_finite = (~finite).sum()
        features, labels = self._bank
        batch_top = targets.max().long() if targets.numel() else targets.new_tensor(-1).long()
        rows = torch.tensor(queries.shape[0], device=labels.device)
        local = torch.cat(
            (
                labelled_summary(labels),
                batch_top.view(1).to(labels.device),
                rows[None],
                self._bank_non_finite.view(1).to(labels.device),
            )
        )
        per_rank = distributed.gather_uneven(local[None]).tolist()
        mine = per_rank[distributed.rank()]
        total = sum(r[0] for r in per_rank) if self.distributed == "shard" else mine[0]
        bank_top = max(r[1] for r in per_rank)
        batch_top = max(r[2] for r in per_rank)
        non_finite = sum(r[4] for r in per_rank)
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
            return _Plan(skip=True)
        if not self._bank_compacted:
            features, labels = keep_labelled(features, labels, mine[0])
            features = features.to(torch.promote_types(features.dtype, queries.dtype))
            self._bank = features, labels
            self._bank_compacted = True
        num_classes = self._num_classes(trainer, bank_top, batch_top, stage)
        if self.k > total:
            self.warn_once(
                trainer,
                "k",
                f"k={self.k} exceeds the {total} labelled rows of the queue; using k={total}",
            )
        self.metrics.get(stage, dataloader_idx, pl_module.device)
        self._exposed.update(self.metrics.all_live())
        self.debug(
            f"{stage} loader {dataloader_idx}: {total} labelled rows, "
            f"num_classes={num_classes}, k={min(self.k, total)}"
        )
        return _Plan(
            skip=False,
            num_classes=num_classes,
            k=min(self.k, total),
            rows=max(r[3] for r in per_rank),
        )

    def _num_classes(self, trainer: Trainer, bank_top: int, batch_top: int, stage: str) -> int:
        where = "validation" if stage == "val" else "test"
        if self.num_classes is not None:
            check_labels(
                bank_top, self.num_classes, f"{self.state_key}: the queue of '{self.target}'"
            )
            check_labels(batch_top, self.num_classes, self._batch_of_labels(stage))
            return self.num_classes
        inferred = max(bank_top, batch_top) + 1
        self.warn_once(
            trainer,
            "num_classes",
            f"num_classes=None: inferred {inferred} classes from the largest label in the "
            f"queue and the first {where} batch. Pass num_classes explicitly: inference "
            "undercounts while the queue has not seen every class, and a metric built for "
            "more classes then fails on the narrower predictions.",
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
        for idx, (non_finite, top) in enumerate(
            self._checks.read(stage, num_dataloaders, pl_module.device)
        ):
            plan = self._plans.get((stage, idx))
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


def _tensor(value: Any) -> Tensor:
    return value if isinstance(value, Tensor) else torch.as_tensor(value)


def _product(dim: int | Sequence[int] | None) -> int | None:
    if dim is None:
        return None
    dims = [dim] if isinstance(dim, int) else list(dim) if isinstance(dim, (tuple, list)) else None
    if not dims or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
        raise ValueError(
            f"input_dim must be None, a positive int or a tuple/list of them, got {dim!r}"
        )
    return math.prod(dims)
