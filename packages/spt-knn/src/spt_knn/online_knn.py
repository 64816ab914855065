"""OnlineKNN: a weighted kNN classifier over a queue of recent training features."""

from __future__ import annotations

from collections.abc import Callable, Iterable, MutableMapping, Sequence
from typing import Any, Literal

from lightning.pytorch import LightningModule, Trainer
from torch import Tensor
from torchmetrics import MetricCollection

from spt_core import DataChecks, SPTCallback, callbacks_metrics, distributed
from spt_core.checks import flat_dim
from spt_knn import _checks, _clean, _report
from spt_knn._boards import CLEAN, QUEUE, Boards
from spt_knn._epoch import EvalEpoch, Loader, batch_counts, uneven_batches
from spt_knn._rows import batch_rows
from spt_knn.bank import KNNBank
from spt_knn.functional import knn_predict
from spt_knn.sweep import Pair, parse_sweep
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

    **Sweeps.** ``k`` and ``temperature`` may be tuples (or lists): every pair ``(k, T)`` is
    scored from one search at the largest ``k`` and has its own metric copies, logged as
    ``eval/{name}_{metric}_k{k}``, with ``_t{T}`` after it when several temperatures are
    given (``T`` rendered by :meth:`spt_knn.Sweep.suffix`: ``t0.07``); the copies are exposed
    under ``"val/0/k10_t0.07"``... and ``batch["{name}_preds"]`` holds ``{(k, T): scores}``.

    **Bank report.** Every evaluation epoch logs ``eval/{name}_bank_rows`` (the labelled
    rows of the bank, over every rank) and ``eval/{name}_bank_classes`` (the distinct classes
    among them), ``0`` and ``0`` while the queue is empty.

    **Clean bank.** With ``clean_loader``, the validation batches are also scored against
    that labelled loader's features, embedded in eval mode under ``torch.no_grad()`` by
    :func:`spt_embed.embed_loader` (each rank its own batches) when
    :class:`spt_embed.EvaluationSchedule` says so: epochs ``0, n, 2n, ...`` of each fit for
    ``clean_every_n_epochs=n`` (never the sanity check), every ``validate``/``test`` outside
    ``fit``. The features keep the model's dtype, are searched like the queue's and released
    at the end of that evaluation (no clean name is logged between due epochs). Names:
    ``eval/{name}_clean_{metric}``, ``eval/{name}_clean_bank_rows``/``_bank_classes``,
    ``batch["{name}_clean_preds"]``, copies under ``"val/0/clean"``. Checkpoints keep
    ``{"clean": {"schedule": ...}}``, not the features.

    At the start of every evaluation epoch the queues are read once into a
    :class:`spt_knn.KNNBank` (:func:`spt_knn.knn_bank`): rows with a negative label or a
    non-finite feature are left out (the latter with a warning), each ``k`` is clipped to the
    labelled rows (with a warning), ``num_classes`` is checked (or inferred) and an empty
    bank skips the epoch with one log line. Nothing in the per-batch path waits on the
    device: the validation labels and features are checked at the end of the epoch, before
    anything is logged. A label ``>= num_classes`` raises a ``ValueError``; a loader in which
    some validation row had a non-finite feature logs no metric that epoch (its scores would
    mean nothing) and says so once. Rows whose label is negative (unlabelled) get scores but
    never reach the metrics.

    Under DDP, ``distributed="gather"`` (default) gathers every rank's rows once per epoch
    and searches them with no communication per batch. ``distributed="shard"`` keeps each
    rank's rows where they are: the validation features of all ranks are gathered, each
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
        queue_length: Training rows kept per rank; ``0``: no queue bank (needs
            ``clean_loader``).
        metrics: ``{name: metric}`` of stateful metrics: anything with ``update``,
            ``compute`` and ``reset``, such as a torchmetrics ``Metric`` (a ``MetricCollection``,
            list or single metric is named automatically; ``None`` or ``{}`` for predictions
            only). They receive ``(scores (B, num_classes), target)`` for the labelled rows
            (see :meth:`spt_core.StageMetrics.update_labelled`). The callback adds no host
            sync per batch off the CPU, but torchmetrics' classification metrics do on CUDA
            (argument validation unless ``validate_args=False``; the mask of the
            ``ignore_index=-1`` their copies get; ``torch.bincount`` unless deterministic
            algorithms are on).
        input_dim: Feature size; a tuple/list is flattened to its product, and features of
            shape ``(B, *input_dim)`` are flattened to ``(B, prod)``. ``None`` accepts any.
        target_dim: Target size per row; only ``1`` (or ``None``) fits class labels.
        num_classes: Number of classes. ``None`` infers it once per epoch from the largest
            label in the bank, with a warning: inference undercounts while the bank has not
            seen every class (a validation label beyond it is then an error at the end of
            the epoch), and a metric built for more classes rejects the narrower scores.
        k: Neighbours per vote, or a tuple/list of distinct values (a sweep).
        temperature: Temperature of the distance weights (lower favours the nearest), or a
            tuple/list of distinct values (a sweep).
        chunk_size: Bank rows per block of the search; ``-1`` one block, ``None`` automatic.
        distance_metric: ``"euclidean"``, ``"squared_euclidean"``, ``"cosine"`` or
            ``"manhattan"``.
        verbose: See :class:`spt_core.SPTCallback`.
        weighting: ``"inverse"`` (``1 / (d + T)``, default), ``"exp"`` (``exp(-d / T)``) or
            ``"uniform"``.
        distributed: ``"gather"`` or ``"shard"`` (see above).
        clean_loader: A labelled loader (``shuffle=False``) for the clean bank, or ``None``.
        clean_every_n_epochs: Training epochs between two embeddings of ``clean_loader``.
        clean_embed: ``clean_embed(pl_module, batch) -> features`` for the clean loader, in
            place of ``validation_step``'s ``input``.

    Raises:
        ValueError: If a ``k``, ``queue_length`` (below 0, or 0 without ``clean_loader``),
            ``num_classes`` or ``clean_every_n_epochs`` is below 1, a ``temperature <= 0``, a
            sweep is empty or repeats a value (or sweeps ``temperature`` with
            ``weighting="uniform"``), ``chunk_size`` is invalid (of any type, as the seed
            documents), a key is empty, an ``input_dim`` size is below 1, ``target_dim`` is
            an int other than 1, or a name (metric, weighting, distributed mode) is not one
            of the allowed values.
        TypeError: If an argument has the wrong type (a non-int ``k``, ``queue_length``,
            ``num_classes``, ``target_dim`` or ``input_dim`` size, a non-numeric
            ``temperature``, a non-string key...), or a metric has no
            ``update``/``compute``/``reset``. Every message names the callback's
            ``state_key`` and the argument.

    Example:
        >>> import torchmetrics
        >>> knn = OnlineKNN(
        ...     "knn", input="embedding", target="label", queue_length=1024,
        ...     metrics={"accuracy": torchmetrics.classification.MulticlassAccuracy(10)},
        ...     num_classes=10, k=(10, 20, 200), distance_metric="cosine", weighting="exp",
        ... )
        >>> knn.state_key, knn.metrics.logged_name("knn", "", (20, 0.07), "accuracy")
        ('OnlineKNN[name=knn]', 'eval/knn_accuracy_k20')
    """

    def __init__(
        self,
        name: str,
        input: str,
        target: str,
        queue_length: int,
        metrics: dict[str, Any] | MetricCollection | None,
        input_dim: tuple[int, ...] | list[int] | int | None = None,
        target_dim: int | None = None,
        num_classes: int | None = None,
        k: int | Sequence[int] = 5,
        temperature: float | Sequence[float] = 0.07,
        chunk_size: int = -1,
        distance_metric: Literal[
            "euclidean", "squared_euclidean", "cosine", "manhattan"
        ] = "euclidean",
        verbose: bool | None = None,
        *,
        weighting: Literal["inverse", "exp", "uniform"] = "inverse",
        distributed: Literal["gather", "shard"] = "gather",
        clean_loader: Iterable[Any] | None = None,
        clean_every_n_epochs: int = 1,
        clean_embed: Callable[[LightningModule, Any], Tensor] | None = None,
    ) -> None:
        super().__init__(name, verbose)
        owner = self.state_key
        _checks.check_callback_arguments(
            owner, input=input, target=target, queue_length=queue_length,
            num_classes=num_classes, target_dim=target_dim, distributed=distributed,
        )  # fmt: skip
        self.sweep = parse_sweep(k, temperature, owner=owner)
        _clean.check_uniform_sweep(self.sweep, weighting, temperature, owner)
        _checks.check_knn_arguments(
            distance_metric=distance_metric, weighting=weighting, chunk_size=chunk_size, owner=owner
        )
        self.clean = _clean.CleanBank(
            clean_loader, clean_every_n_epochs, clean_embed, self.state_key, queue_length
        )
        self.input, self.target = input, target
        self.queue_length = queue_length
        self.input_dim = flat_dim(input_dim, f"{owner}: input_dim")
        self.target_dim = target_dim
        self.num_classes = num_classes
        self.k, self.temperature = k, temperature
        self.chunk_size = chunk_size
        self.distance_metric = distance_metric
        self.weighting = weighting
        self.distributed = distributed
        banks = ((QUEUE,) if queue_length else ()) + ((CLEAN,) if clean_loader is not None else ())
        self.metrics = Boards(_report.metric_dict(metrics, self.state_key), self.sweep, banks)
        self._queues: tuple[OnlineQueue, OnlineQueue] | None = None
        self.data_checks = DataChecks()
        self._epochs: dict[str, EvalEpoch] = {}
        self._bank_report: dict[str, tuple[int, Tensor]] = {}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.clean.setup(stage)  # a fit starts over, before a checkpoint restores the schedule
        if self.queue_length:
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
        callbacks_metrics(pl_module)[self.name] = self.metrics.exposed

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.info_if_no_validation(trainer, f"eval/{self.name}_*")

    def _eval_epoch_start(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Read the queue bank (and embed the clean one when due), settle ``k`` and the class
        count. Every rank runs this at the same hook whatever batches it will run (one host
        sync per bank; in shard mode under DDP small collectives, one comparing the ranks'
        batch counts)."""
        self._epochs, self._bank_report = {}, {}
        sharded = self.distributed == "shard" and distributed.is_distributed()
        banks = _clean.read_banks(self, trainer, pl_module, sharded)
        for which, bank in banks.items():  # insertion order: the same on every rank
            _report.describe_bank(self, trainer, bank, which)
            self._bank_report[which] = (bank.size, _clean.class_count(bank, sharded))
        live = {which: bank for which, bank in banks.items() if bank.size}
        if live:
            uneven = sharded and uneven_batches(trainer, stage, pl_module.device)
            if uneven:
                _report.say_deferred(self, trainer, uneven)
            for which, bank in live.items():
                self._epochs[which] = EvalEpoch(bank, sharded=sharded, deferred=bool(uneven))
                self.debug(f"{stage}: {which or 'queue'} bank of {bank.size} rows")

    def _eval_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, stage: str, outputs: Any,
        batch: Any, dataloader_idx: int,
    ) -> None:  # fmt: skip
        """Score the batch's features against each bank and update the metrics."""
        queries, targets = batch_rows(outputs, batch, self.input, self.target, self.state_key)
        if not self._epochs:
            return
        for which, epoch in self._epochs.items():
            _checks.check_width(queries, epoch.bank, self, which)
        if self.metrics:
            self.data_checks.update(stage, dataloader_idx, queries, targets)
        loader = (stage, dataloader_idx)
        for which, epoch in self._epochs.items():
            if epoch.deferred:
                epoch.keep(loader, queries, targets)
                continue
            scores = self._predict(queries, epoch.bank_for(loader, queries, self.state_key))
            if isinstance(batch, MutableMapping):
                _report.write_preds(self, trainer, batch, which, scores)
            self._update_metrics(which, loader, scores, targets, pl_module)

    def _eval_epoch_end(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Score the kept rows (deferred shard mode), log, and release this epoch's banks."""
        loaders = len(batch_counts(trainer, stage))
        for which, epoch in self._epochs.items():  # every rank, every bank, every loader
            if epoch.deferred:
                kept = epoch.score_kept(stage, loaders, pl_module.device, self._predict)
                for loader, targets, scores in kept:
                    self._update_metrics(which, loader, scores, targets, pl_module)
        if self.metrics:
            classes = [epoch.bank.num_classes for epoch in self._epochs.values()]
            _report.log_epoch(self, trainer, pl_module, stage, loaders, min(classes, default=None))
        _report.log_banks(self, pl_module, self._bank_report)
        self._epochs, self._bank_report = {}, {}

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        self._epochs, self._bank_report = {}, {}

    def state_dict(self) -> dict[str, Any]:
        """``{"clean": {"schedule": ...}}`` with a clean loader (the epoch last embedded),
        else ``{}``."""
        return {"clean": self.clean.state_dict()} if self.clean.loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.clean.load_state_dict(state_dict.get("clean", {}))

    def _predict(self, queries: Tensor, bank: KNNBank) -> dict[Pair, Tensor]:
        scores = knn_predict(
            queries, bank, **_clean.sweep_arguments(self.sweep), weighting=self.weighting,
            distance_metric=self.distance_metric, chunk_size=self.chunk_size,
        )  # fmt: skip
        return scores if self.sweep.swept else {self.sweep.pairs[0]: scores}

    def _update_metrics(
        self, which: str, loader: Loader, scores: dict[Pair, Tensor], targets: Tensor,
        pl_module: LightningModule,
    ) -> None:  # fmt: skip
        where = _report.labels_of(self, loader[0])
        self.metrics.record(
            self._epochs[which], which, loader, scores, targets, pl_module.device, where
        )
