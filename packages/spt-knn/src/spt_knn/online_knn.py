"""OnlineKNN: a weighted kNN classifier over a queue of recent training features."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor
from torchmetrics import Metric, MetricCollection

from spt_core import DataChecks, SPTCallback, StageMetrics, callbacks_metrics, distributed
from spt_core.checks import flat_dim
from spt_knn import _checks, _report
from spt_knn._epoch import EvalEpoch, Loader, batch_counts, uneven_batches
from spt_knn._rows import batch_rows, queue_rows
from spt_knn.bank import KNNBank, knn_bank
from spt_knn.functional import knn_predict
from spt_queue import OnlineQueue, find_or_create_queue


class OnlineKNN(SPTCallback):
    """Weighted k-nearest-neighbour evaluation of the features a model produces as it trains.

    The callback finds or creates an :class:`spt_queue.OnlineQueue` for ``input`` (features)
    and one for ``target`` (labels); they fill from every training batch. On each validation
    (and test) batch the features are classified by a vote of their ``k`` nearest neighbours
    in the queue (:func:`spt_knn.knn_predict`), the scores are written to
    ``batch["{name}_preds"]`` when the batch is a dict, and the metrics are updated. At the
    end of the epoch every metric is computed, logged as ``eval/{name}_{metric}`` (with
    Lightning's ``/dataloader_idx_{i}`` suffix when there are several validation loaders,
    each with its own metric copies) and reset. The copies live on the module's device and
    are exposed at ``callbacks_metrics(pl_module)[name]`` (keys ``"val/0"``, ``"test/0"``...).

    At the start of every evaluation epoch the queues are read once into a
    :class:`spt_knn.KNNBank` (:func:`spt_knn.knn_bank`): rows with a negative label or a
    non-finite feature are left out (the latter with a warning), ``k`` is clipped to the
    labelled rows (with a warning), ``num_classes`` is checked (or inferred) and an empty
    queue skips the epoch with one log line. Nothing in the per-batch path waits on the
    device: the validation labels and features are checked at the end of the epoch, before
    anything is logged. A label ``>= num_classes`` raises a ``ValueError``; a loader in which
    some validation row had a non-finite feature logs nothing that epoch (its scores would
    mean nothing) and says so once. Rows whose label is negative (unlabelled) get scores but
    never reach the metrics. The bank is released when the epoch ends.

    Under DDP, ``distributed="gather"`` (default) gathers every rank's queue rows once per
    epoch and searches them with no communication per batch. ``distributed="shard"`` keeps
    each rank's rows where they are: the validation features of all ranks are gathered, each
    rank searches its own shard and the candidates are merged, with the same results as
    ``"gather"`` and a per-rank memory that does not grow with the number of ranks. In both
    modes ranks may run different numbers of validation batches, or none: in shard mode a
    rank whose batches of a loader are done serves the other ranks' searches until they are
    done too (the rows are then scored at the end of the epoch, and ``{name}_preds`` is not
    written). In shard mode no batch may hold more rows than the largest first batch of its
    loader over the ranks (true of every ``DataLoader``).

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
        ValueError: If ``k``, ``queue_length`` or ``num_classes`` is below 1, ``temperature
            <= 0``, ``chunk_size`` is invalid, a key is empty, or a name (metric, weighting,
            distributed mode) is not one of the allowed values.
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
            if not isinstance(key, str):
                raise TypeError(f"{argument} must be a non-empty string key, got {key!r}")
            if not key:
                raise ValueError(f"{argument} must be a non-empty string key, got {key!r}")
        _checks.check_positive_int(queue_length, "queue_length")
        _checks.check_knn_arguments(
            k=k,
            temperature=temperature,
            distance_metric=distance_metric,
            weighting=weighting,
            chunk_size=chunk_size,
        )
        if num_classes is not None:
            _checks.check_positive_int(num_classes, "num_classes")
        if target_dim not in (None, 1) or isinstance(target_dim, bool):
            raise ValueError(
                f"target_dim must be None or 1 (one integer class label per row), "
                f"got {target_dim!r}"
            )
        if distributed not in _checks.DISTRIBUTED_MODES:
            raise ValueError(
                f"distributed must be one of {_checks.DISTRIBUTED_MODES}, got {distributed!r}"
            )
        self.input, self.target = input, target
        self.queue_length = queue_length
        self.input_dim = flat_dim(input_dim, "input_dim")
        self.target_dim = target_dim
        self.num_classes = num_classes
        self.k = k
        self.temperature = float(temperature)
        self.chunk_size = chunk_size
        self.distance_metric = distance_metric
        self.weighting = weighting
        self.distributed = distributed
        self.metrics = StageMetrics(_report.metric_dict(metrics, self.state_key))
        self._queues: tuple[OnlineQueue, OnlineQueue] | None = None
        self._exposed: dict[str, dict[str, Any]] = {}
        self.data_checks = DataChecks()
        self._epoch: EvalEpoch | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        previous = self._queues or (None, None)
        self._queues = (
            find_or_create_queue(
                trainer, self.input, self.queue_length, self.input_dim,
                previous=previous[0], consumer=self.state_key,
            ),
            find_or_create_queue(
                trainer, self.target, self.queue_length, self.target_dim,
                previous=previous[1], consumer=self.state_key, class_labels=True,
            ),
        )  # fmt: skip
        callbacks_metrics(pl_module)[self.name] = self._exposed

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.info_if_no_validation(trainer, f"eval/{self.name}_*")

    def _eval_epoch_start(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Read the bank, settle ``k`` and the class count. Every rank runs this at the same
        hook whatever batches it will run (one host sync; in shard mode under DDP two small
        collectives, the second comparing the ranks' batch counts)."""
        self._epoch = None
        sharded = self.distributed == "shard" and distributed.is_distributed()
        features, labels = queue_rows(
            self._queues, self.queue_length, self.state_key, gather=not sharded,
            device=pl_module.device,
        )  # fmt: skip
        bank = knn_bank(
            features, labels, self.num_classes, sharded=sharded,
            where=f"{self.state_key}: the queue of '{self.target}'",
        )  # fmt: skip
        _report.describe_bank(self, trainer, bank)
        if bank.size:
            uneven = sharded and uneven_batches(trainer, stage, pl_module.device)
            if uneven:
                self.info_once(
                    trainer,
                    "deferred",
                    "the ranks run different (or unknown) numbers of evaluation batches "
                    f"{uneven} (per rank, per loader; -1: unknown): shard mode scores the rows "
                    f"at the end of the epoch, and does not write batch['{self.name}_preds']",
                )
            self._epoch = EvalEpoch(bank, sharded=sharded, deferred=bool(uneven))
            self.debug(f"{stage}: {bank.size} labelled rows, {bank.num_classes} classes")

    def _eval_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, stage: str, outputs: Any,
        batch: Any, dataloader_idx: int,
    ) -> None:  # fmt: skip
        """Score the batch's features against the bank and update the metrics."""
        queries, targets = batch_rows(outputs, batch, self.input, self.target, self.state_key)
        epoch = self._epoch
        if epoch is None:
            return
        if queries.shape[1] != epoch.bank.features.shape[1] and epoch.bank.features.shape[0]:
            raise ValueError(
                f"{self.state_key}: '{self.input}' has {queries.shape[1]} features per row, "
                f"the queue holds rows of {epoch.bank.features.shape[1]}"
            )
        if self.metrics:
            self.data_checks.update(stage, dataloader_idx, queries, targets)
        loader = (stage, dataloader_idx)
        if epoch.deferred:
            epoch.keep(loader, queries, targets)
            return
        scores = self._predict(queries, epoch.bank_for(loader, queries, self.state_key))
        if isinstance(batch, MutableMapping):
            self._write_preds(trainer, batch, scores)
        self._update_metrics(loader, scores, targets, pl_module)

    def _eval_epoch_end(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Score the kept rows (deferred shard mode), log, and release this epoch's bank."""
        loaders = len(batch_counts(trainer, stage))
        epoch = self._epoch
        if epoch is not None and epoch.deferred:
            for idx in range(loaders):  # every rank, every loader, in order
                rounds = epoch.deferred_rounds((stage, idx), pl_module.device)
                scores = [self._predict(part, rounds.bank) for part in rounds.parts]
                if rounds.batches:  # then this rank sent rows in the first round at least
                    for part, targets in rounds.split(torch.cat(scores)):
                        self._update_metrics((stage, idx), part, targets, pl_module)
        if self.metrics:
            num_classes = None if epoch is None else epoch.bank.num_classes
            _report.log_epoch(self, trainer, pl_module, stage, loaders, num_classes)
        self._epoch = None

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        self._epoch = None

    def _predict(self, queries: Tensor, bank: KNNBank) -> Tensor:
        return knn_predict(
            queries, bank, k=self.k, temperature=self.temperature,
            distance_metric=self.distance_metric, weighting=self.weighting,
            chunk_size=self.chunk_size,
        )  # fmt: skip

    def _write_preds(self, trainer: Trainer, batch: MutableMapping, scores: Tensor) -> None:
        key = f"{self.name}_preds"
        if key in batch:
            self.warn_once(
                trainer,
                "preds-key",
                f"the batch already holds '{key}'; it is overwritten with this callback's "
                "predictions (rename the batch entry or the callback to keep both)",
            )
        batch[key] = scores

    def _update_metrics(
        self, loader: Loader, scores: Tensor, targets: Tensor, pl_module: LightningModule
    ) -> None:
        if not self.metrics or targets.shape[0] == 0:  # some metrics fail on no rows
            return
        if loader not in self._epoch.metrics_on_device:
            self.metrics.get(*loader, pl_module.device)
            self._exposed.update(self.metrics.all_live())
            self._epoch.metrics_on_device.add(loader)
        try:
            self.metrics.update_labelled(*loader, scores, targets)
        except (RuntimeError, ValueError, IndexError):
            # A metric refused the batch: say so if a label is why (a sync on the way out).
            top = int(targets.max()) if targets.numel() else -1
            where = _report.labels_of(self, loader[0])
            _checks.check_labels(top, self._epoch.bank.num_classes, where)
            raise
