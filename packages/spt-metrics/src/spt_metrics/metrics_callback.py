"""``MetricsCallback``: feed what the steps return to any metric, and log the values."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lightning.pytorch import LightningModule, Trainer

from spt_core import SPTCallback, callbacks_metrics, distributed
from spt_metrics._collector import Collector, num_dataloaders
from spt_metrics._leaves import Plan
from spt_metrics._ranks import collective_device
from spt_metrics._schedule import EVERY_STEP, Schedule, check_bools
from spt_metrics.needs import NeedsType

MetricsType = Callable[..., Any] | list[Callable[..., Any]] | dict[str, Callable[..., Any]]

STAGES = ("train", "val", "test")


class MetricsCallback(SPTCallback):
    """Compute and log metrics on what ``training_step``/``validation_step``/``test_step`` return.

    After every step the callback takes the inputs each metric needs from the step outputs
    (or the batch), feeds them to the metric, and logs ``{metric_name}/{stage}`` with
    ``stage`` in ``train``, ``val``, ``test`` (plus ``/dataloader_idx_{i}`` with several
    validation or test loaders). Each stage and loader has its own copies of the metrics
    (``pl_module.callbacks_metrics[name]["{stage}/{dataloader_idx}"]``).

    Metrics:
        - torchmetrics ``Metric`` objects are updated on the module's device and computed
          (torchmetrics' sync) when a value is logged; a ``MetricCollection`` logs one value
          per member. ``compute_per_*_step`` does not apply to them.
        - scikit-learn metrics and plain functions take numpy arrays and return a number;
          each is wrapped in a :class:`~spt_metrics.FunctionMetric`. *Per-step* mode: they
          run on every batch, and the logged value is the batch-size weighted mean over every
          rank. *Exact* mode: the outputs are kept (on the CPU with ``compute_on_cpu=True``)
          and the function runs once on their concatenation over every batch and rank.

    When values are logged:
        - train, ``every_n_train_steps=k`` (default 1): after every ``k``-th training batch
          of the run, the value over those ``k`` batches, ``on_step=True`` (the Trainer's
          ``log_every_n_steps`` filters what reaches the logger, as for any ``self.log``);
          a window still open when training ends is not logged.
        - train, ``every_n_train_epochs=m``: the value over each ``m``-th epoch (epochs
          ``m-1, 2m-1, ...``) at its end, ``on_epoch=True``. Setting only this one switches
          the step schedule off; setting both to positive values is an error.
        - val, ``every_n_val_epochs=n``: over every ``n``-th validation run (the sanity check
          does not count); test, ``on_test_end=True``: over every test run.

    Bad inputs: labels outside the ``num_classes`` of a torchmetrics multiclass metric (its
    ``ignore_index`` aside; copies whose ``ignore_index`` is ``None`` ignore ``-1``) raise a
    ``ValueError`` naming the metric, the key, the values and ``num_classes``, checked once
    per epoch before the values are logged (and when an update crashes on them); NaN/inf
    values reaching a metric give one warning per epoch. Both are counted on the device.

    A stage that saw no batch logs nothing. The counters and the open training window are
    checkpointed; under DDP the window holds every rank's part (gathered in
    ``on_save_checkpoint``, restored onto rank 0; ``state_dict()`` never communicates).

    Args:
        metrics: A callable, a list of callables (named after the callable, made unique), or
            a dict ``{name: callable}``.
        needs: Where each metric's inputs come from (see :mod:`spt_metrics.needs`): ``None``
            asks for each metric's required parameters by name; a list gives positional
            sources, a dict ``{parameter: source}`` keyword sources, for every metric; a dict
            ``{metric_name: list | dict}`` overrides single metrics. A source is an output
            key or a callable of the outputs dict.
        compute_per_training_step: Per-step (``True``) or exact (``False``) mode for metric
            functions during training.
        compute_per_val_step: The same during validation.
        compute_per_test_step: The same during test.
        compute_on_cpu: Keep the outputs collected in exact mode on the CPU.
        every_n_train_steps: Log training values every so many training batches; ``0`` or
            ``None``: never.
        every_n_train_epochs: Log training values every so many epochs; ``0`` or ``None``:
            never.
        every_n_val_epochs: Log validation values every so many validation runs; ``0`` or
            ``None``: never.
        on_test_end: Log test values at the end of a test run.
        prog_bar: Show the values in the progress bar.
        name: This callback's name, unique among spt callbacks (several ``MetricsCallback``
            coexist under different names).
        verbose: See :class:`spt_core.SPTCallback`.

    Raises:
        TypeError: If an argument has the wrong type (the message names it).
        ValueError: If a value is out of range, if both training schedules are set, or if
            ``needs`` does not fit the metrics (see :func:`spt_metrics.needs.split_needs`);
            during a fit, for class labels outside a metric's ``num_classes``.

    Example:
        >>> from torchmetrics.classification import MulticlassAccuracy
        >>> callback = MetricsCallback({"acc": MulticlassAccuracy(num_classes=3)},
        ...                            every_n_train_epochs=1)
        >>> callback.needs["acc"]
        Needs(args=(), kwargs={'preds': 'preds', 'target': 'target'})
        >>> callback.state_key
        'MetricsCallback[name=metrics]'
    """

    def __init__(
        self,
        metrics: MetricsType,
        needs: NeedsType = None,
        compute_per_training_step: bool = True,
        compute_per_val_step: bool = False,
        compute_per_test_step: bool = False,
        compute_on_cpu: bool = False,
        every_n_train_steps: int | None = EVERY_STEP,
        every_n_train_epochs: int | None = None,
        every_n_val_epochs: int | None = 1,
        on_test_end: bool = False,
        prog_bar: bool = True,
        *,
        name: str = "metrics",
        verbose: bool | None = None,
    ) -> None:
        super().__init__(name, verbose)
        per_step = {
            "train": compute_per_training_step,
            "val": compute_per_val_step,
            "test": compute_per_test_step,
        }
        check_bools(
            self.state_key,
            compute_per_training_step=compute_per_training_step,
            compute_per_val_step=compute_per_val_step,
            compute_per_test_step=compute_per_test_step,
            compute_on_cpu=compute_on_cpu,
            on_test_end=on_test_end,
            prog_bar=prog_bar,
        )
        self.schedule = Schedule.from_arguments(
            every_n_train_steps, every_n_train_epochs, every_n_val_epochs, self.state_key
        )
        self.compute_on_cpu = compute_on_cpu
        self.log_on_test_end = on_test_end
        self.prog_bar = prog_bar
        self._plan = Plan(metrics, needs, owner=self.state_key)
        self.metrics, self.needs = self._plan.metrics, self._plan.needs
        self._collector = Collector(
            self._plan, per_step, compute_on_cpu, owner=self.state_key, say=self.info
        )
        self._collecting = dict.fromkeys(STAGES, False)

    every_n_train_steps = property(lambda self: self.schedule.every_n_train_steps)
    every_n_train_epochs = property(lambda self: self.schedule.every_n_train_epochs)
    every_n_val_epochs = property(lambda self: self.schedule.every_n_val_epochs)
    train_batches = property(lambda self: self.schedule.train_batches)
    train_epochs = property(lambda self: self.schedule.train_epochs)
    val_runs = property(lambda self: self.schedule.val_runs)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        callbacks_metrics(pl_module)[self.name] = self._collector.all_live()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        mismatch = self.schedule.mismatch(trainer.log_every_n_steps)
        if mismatch:
            self.warn_once(trainer, "log_every_n_steps", mismatch)
        if self.every_n_val_epochs:
            self.info_if_no_validation(trainer, "the '/val' values")
        if self.schedule.end_skipped_epoch(trainer):  # the uninterrupted run logged the window
            self._collector.drop_train_window()
        # A fit resumed mid-epoch starts no epoch: whether this one is collected is decided here.
        self._collecting["train"] = self.schedule.collects_train_epoch()

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._collecting["train"] = self.schedule.collects_train_epoch()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        logs = self.schedule.end_train_batch(trainer.current_epoch)
        if self._collecting["train"]:
            self._collector.update("train", 0, outputs, batch, pl_module.device)
            if logs:
                self.compute_metrics_and_log(trainer, pl_module, "train", True, False)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        logs = self.schedule.end_train_epoch()
        if self._collecting["train"]:
            self._check_inputs(trainer, pl_module, "train")
            if logs:
                self.compute_metrics_and_log(trainer, pl_module, "train", False, True)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        batches = self._collector.batches.get(("train", 0), 0)
        if batches:
            self.debug(f"training ended with {batches} batches in an unlogged window")

    def _eval_epoch_start(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "test":
            self._collecting[stage] = self.log_on_test_end
        else:
            sanity = trainer.sanity_checking
            self._collecting[stage] = not sanity and self.schedule.collects_val_run()

    def _eval_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        stage: str,
        outputs: Any,
        batch: Any,
        idx: int,
    ) -> None:
        if self._collecting[stage] and not trainer.sanity_checking:
            self._collector.update(stage, idx, outputs, batch, pl_module.device)

    def _eval_epoch_end(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if trainer.sanity_checking:
            return
        if self._collecting[stage]:
            self._check_inputs(trainer, pl_module, stage)
            self.compute_metrics_and_log(trainer, pl_module, stage, on_step=False, on_epoch=True)
        self._collecting[stage] = False
        if stage == "val":
            self.schedule.end_val_run()

    def compute_metrics_and_log(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        collector: str,
        on_step: bool,
        on_epoch: bool,
        reset: bool = True,
    ) -> dict[str, Any]:
        """Compute every metric over what stage ``collector`` collected, and log the values.

        Every rank must call this at the same point (the values are synchronised).

        Args:
            trainer: The Trainer.
            pl_module: The LightningModule that logs.
            collector: The stage whose collected outputs are used: ``"train"``, ``"val"`` or
                ``"test"``.
            on_step: Passed to ``pl_module.log``.
            on_epoch: Passed to ``pl_module.log``.
            reset: Start a new window afterwards (``False`` keeps accumulating).

        Returns:
            ``{logged_name: value}``; empty when no rank collected anything.
        """
        if collector not in STAGES:
            raise ValueError(f"collector must be one of {STAGES}, got {collector!r}")
        values = self._collector.compute(
            collector,
            num_dataloaders(trainer, collector),
            pl_module.device,
            # Training ranks step in lockstep; validation and test ranks may have no batch.
            exchange=collector != "train",
            collective_device=collective_device(pl_module),
            reset=reset,
        )
        if not values:
            self.info_once(trainer, f"empty-{collector}", f"no {collector} batch: nothing logged")
            return values
        self.log_agreed(
            pl_module,
            values,
            on_step=on_step,
            on_epoch=on_epoch,
            prog_bar=self.prog_bar,
            batch_size=1,
            add_dataloader_idx=False,
        )
        return values

    def _check_inputs(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Report this epoch's bad inputs (every rank together: one collective, one sync)."""
        count = num_dataloaders(trainer, stage)
        warn = lambda topic, message: self.warn_once(trainer, topic, message)  # noqa: E731
        self._collector.reports.read(stage, count, warn, collective_device(pl_module))

    def state_dict(self) -> dict[str, Any]:
        """Counters and this rank's open training window (no communication)."""
        window = self._collector.train_window(synchronise=False)
        return {**self.schedule.counters(), "train_window": window}

    def gather_checkpoint_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """Every rank's part of the open window (torchmetrics' sync): Lightning writes rank
        0's checkpoint, and nothing may be lost."""
        if not distributed.is_distributed():
            return state
        return {**state, "train_window": self._collector.train_window(synchronise=True)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the counters and the open training window (its states onto rank 0 only:
        under DDP the checkpoint holds every rank's part)."""
        self.schedule.load_counters(state_dict)
        window = state_dict.get("train_window") or {}
        self._collector.load_train_window(window, with_states=distributed.rank() == 0)
