"""``MetricsCallback``: feed what the steps return to any metric, and log the values."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from torchmetrics import Metric, MetricCollection

from spt_core import (
    SPTCallback,
    StageMetrics,
    callbacks_metrics,
    distributed,
    named_metrics,
    unique_names,
)
from spt_metrics._convert import as_rows, batch_size, flatten_result, scalar, to_numpy
from spt_metrics.checks import (
    EpochReport,
    InputChecks,
    LabelCheck,
    batch_label_report,
    describe_source,
    label_position,
    labels_message,
)
from spt_metrics.needs import (
    Needs,
    NeedsType,
    arguments,
    bind_needs,
    fetch,
    index_sources,
    split_needs,
)
from spt_metrics.sync import (
    Shapes,
    agree,
    collective_device,
    restore_states,
    spec_of,
    states_on_cpu,
    sum_over_ranks,
)
from spt_metrics.window import Window

MetricsType = Callable[..., Any] | list[Callable[..., Any]] | dict[str, Callable[..., Any]]

STAGES = ("train", "val", "test")


class _Default(int):
    """An ``int`` default that can be told apart from the same value passed explicitly."""


_EVERY_STEP = _Default(1)


@dataclass(frozen=True)
class _Leaf:
    metric: Any
    needs: Needs  # positions in the callback's source list
    torchmetric: bool


class MetricsCallback(SPTCallback):
    """Compute and log metrics on what ``training_step``/``validation_step``/``test_step`` return.

    After every step the callback takes the inputs each metric needs from the step outputs
    (or the batch), feeds them to the metric, and logs ``{metric_name}/{stage}`` with
    ``stage`` in ``train``, ``val``, ``test`` (plus ``/dataloader_idx_{i}`` with several
    validation or test loaders).

    Metrics:
        - torchmetrics ``Metric`` objects are updated on the module's device every step and
          computed (one synchronisation across ranks) when a value is logged. A
          ``MetricCollection`` logs one value per member. ``compute_per_*_step`` does not
          apply to them.
        - scikit-learn metric functions and plain functions receive numpy arrays on the CPU
          and return a number. In *per-step* mode they run on every batch and the logged
          value is the average of the batch values weighted by batch size, over every rank.
          In *exact* mode the needed outputs are kept (on the CPU with
          ``compute_on_cpu=True``) and the function runs once on their concatenation over
          every batch and every rank (uneven counts allowed).

    Every stage, and every validation/test dataloader, owns its own copies of the metrics: a
    validation run in the middle of a training epoch never mixes into the training value.

    When values are logged:
        - train, ``every_n_train_steps=k`` (the default, ``k=1``): after every ``k``-th
          training batch (counted over the whole run, across epochs) the value over those
          ``k`` batches is logged with ``on_step=True``. As for any ``self.log`` call in
          ``training_step``, the Trainer's ``log_every_n_steps`` decides which of these
          values reach the logger; the progress bar and ``trainer.callback_metrics`` see
          all of them. A window still open when training ends is not logged.
        - train, ``every_n_train_epochs=m``: the value over every training batch of each
          ``m``-th epoch (epochs ``m-1, 2m-1, ...``, counted from 0) is logged at the end of
          that epoch with ``on_epoch=True``. Setting only ``every_n_train_epochs`` switches
          the step schedule off; setting both to positive values is an error.
        - val, ``every_n_val_epochs=n``: at the end of every ``n``-th validation run (the
          sanity check does not count), over every batch of that run.
        - test, ``on_test_end=True``: at the end of every test run.

    Bad inputs are reported with the callback's and the metric's names. A torchmetrics
    metric with an integer ``num_classes`` (the multiclass metrics) must get ``target``
    labels in ``[0, num_classes)`` (or its ``ignore_index``; copies whose ``ignore_index`` is
    ``None`` ignore ``-1``, the unlabelled rows): the labels are counted on the device and
    checked once at the end of every epoch (one host sync), before its values are logged,
    and a label outside raises a ``ValueError`` that names the metric, the key, the values
    and ``num_classes``; the same error replaces torchmetrics' own when an update crashes on
    such a label. NaN/inf values that reach a metric (torchmetrics inputs counted the same
    way, numpy inputs of functions checked on the host) give one warning per epoch naming
    the metrics and the key; the value is still logged (often ``nan``).

    A stage that saw no batch logs nothing. The counters (training batches, training epochs,
    validation runs) and the open training window are saved in the checkpoint and continue
    after a resume; under DDP the checkpointed window holds every rank's part.

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
        every_n_train_steps: int | None = _EVERY_STEP,
        every_n_train_epochs: int | None = None,
        every_n_val_epochs: int | None = 1,
        on_test_end: bool = False,
        prog_bar: bool = True,
        *,
        name: str = "metrics",
        verbose: bool | None = None,
    ) -> None:
        super().__init__(name, verbose)
        flags = {
            "compute_per_training_step": compute_per_training_step,
            "compute_per_val_step": compute_per_val_step,
            "compute_per_test_step": compute_per_test_step,
            "compute_on_cpu": compute_on_cpu,
            "on_test_end": on_test_end,
            "prog_bar": prog_bar,
        }
        for argument, value in flags.items():
            if not isinstance(value, bool):
                raise TypeError(f"{argument} must be a bool, got {value!r}")
        steps_given = every_n_train_steps is not _EVERY_STEP
        for argument, value in {
            "every_n_train_steps": every_n_train_steps,
            "every_n_train_epochs": every_n_train_epochs,
            "every_n_val_epochs": every_n_val_epochs,
        }.items():
            _check_every(argument, value)
        if every_n_train_epochs:
            if steps_given and every_n_train_steps:
                raise ValueError(
                    f"every_n_train_steps={every_n_train_steps} and every_n_train_epochs="
                    f"{every_n_train_epochs} are mutually exclusive; set one of them (or set "
                    "the other to None)"
                )
            every_n_train_steps = None
        self.every_n_train_steps = int(every_n_train_steps or 0)
        self.every_n_train_epochs = int(every_n_train_epochs or 0)
        self.every_n_val_epochs = int(every_n_val_epochs or 0)
        self.compute_on_cpu = compute_on_cpu
        self.log_on_test_end = on_test_end
        self.prog_bar = prog_bar
        self._per_step = {
            "train": compute_per_training_step,
            "val": compute_per_val_step,
            "test": compute_per_test_step,
        }

        self.metrics, self.needs = _leaves(metrics, needs, owner=self.state_key)
        self._sources, indexed = index_sources(self.needs)
        self._leaves = {
            leaf: _Leaf(metric, indexed[leaf], isinstance(metric, Metric))
            for leaf, metric in self.metrics.items()
        }
        self._owners = _owners(indexed, self.state_key)
        self._functions = [leaf for leaf, spec in self._leaves.items() if not spec.torchmetric]
        self._function_sources = sorted(
            {p for leaf in self._functions for p in self._leaves[leaf].needs.sources()}
        )
        self._copies = StageMetrics(
            {leaf: spec.metric for leaf, spec in self._leaves.items() if spec.torchmetric}
        )
        self._checks = _input_checks(self._leaves)
        self._windows: dict[tuple[str, int], Window] = {}
        self._collecting = dict.fromkeys(STAGES, False)
        self.train_batches = 0
        self.train_epochs = 0
        self.val_runs = 0

    # ------------------------------------------------------------------ hooks

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        callbacks_metrics(pl_module)[self.name] = self._copies.all_live()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        k, every = self.every_n_train_steps, trainer.log_every_n_steps
        if k and every and k % every and every % k:
            self.warn_once(
                trainer,
                "log_every_n_steps",
                f"train values are logged every {k} batches and log_every_n_steps={every}, so "
                f"only every {math.lcm(k, every)}th batch's value reaches the logger; make one "
                "a multiple of the other",
            )
        if self.every_n_val_epochs:
            self.info_if_no_validation(trainer, "the '/val' values")

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        m = self.every_n_train_epochs
        self._collecting["train"] = bool(self.every_n_train_steps) or bool(
            m and (self.train_epochs + 1) % m == 0
        )

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.train_batches += 1
        if not self._collecting["train"]:
            return
        self._collect("train", 0, pl_module, outputs, batch)
        k = self.every_n_train_steps
        if k and self.train_batches % k == 0:
            self.compute_metrics_and_log(trainer, pl_module, "train", on_step=True, on_epoch=False)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._collecting["train"]:
            self._check_inputs(trainer, pl_module, "train")
        if self.every_n_train_epochs and self._collecting["train"]:
            self.compute_metrics_and_log(trainer, pl_module, "train", on_step=False, on_epoch=True)
        self.train_epochs += 1

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        n = self.every_n_val_epochs
        self._collecting["val"] = (
            not trainer.sanity_checking and bool(n) and (self.val_runs + 1) % n == 0
        )

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._collecting["val"] and not trainer.sanity_checking:
            self._collect("val", dataloader_idx, pl_module, outputs, batch)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self._collecting["val"]:
            self._check_inputs(trainer, pl_module, "val")
            self.compute_metrics_and_log(trainer, pl_module, "val", on_step=False, on_epoch=True)
        self._collecting["val"] = False
        self.val_runs += 1

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._collecting["test"] = self.log_on_test_end

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._collecting["test"]:
            self._collect("test", dataloader_idx, pl_module, outputs, batch)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._collecting["test"]:
            self._check_inputs(trainer, pl_module, "test")
            self.compute_metrics_and_log(trainer, pl_module, "test", on_step=False, on_epoch=True)
        self._collecting["test"] = False

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        window = self._windows.get(("train", 0))
        if window is not None and window.batches:
            self.debug(f"training ended with {window.batches} batches in an unlogged window")

    # ------------------------------------------------------------- computing

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
        values = self._compute(trainer, pl_module, collector, reset)
        if not values:
            self.info_once(trainer, f"empty-{collector}", f"no {collector} batch: nothing logged")
            return values
        for key, value in values.items():
            pl_module.log(
                key,
                value,
                on_step=on_step,
                on_epoch=on_epoch,
                prog_bar=self.prog_bar,
                sync_dist=False,  # already identical on every rank
                batch_size=1,
                add_dataloader_idx=False,
            )
        callbacks_metrics(pl_module)[self.name] = self._copies.all_live()
        return values

    def _collect(
        self, stage: str, idx: int, pl_module: LightningModule, outputs: Any, batch: Any
    ) -> None:
        window = self._windows.setdefault((stage, idx), Window())
        window.batches += 1
        values = [
            fetch(source, outputs, batch, owner=self._owners[p])
            for p, source in enumerate(self._sources)
        ]
        if self._copies:
            device = pl_module.device
            tensors = [torch.as_tensor(v, device=device) if _is_array(v) else v for v in values]
            live = self._copies.get(stage, idx, device)
            self._checks.update(stage, idx, tensors, live, device)
            for leaf, spec in self._leaves.items():
                if spec.torchmetric:
                    args, kwargs = arguments(spec.needs, tensors)
                    try:
                        live[leaf].update(*args, **kwargs)
                    except Exception as error:
                        self._raise_for_labels(leaf, stage, tensors, live[leaf], error)
                        raise
        if not self._functions:
            return
        if self._per_step[stage]:
            arrays = {p: to_numpy(values[p]) for p in self._function_sources}
            self._warn_non_finite_arrays(pl_module.trainer, stage, arrays)
            for leaf in self._functions:
                spec = self._leaves[leaf]
                args, kwargs = arguments(spec.needs, arrays)
                value = scalar(spec.metric(*args, **kwargs), name=leaf)
                window.add_value(leaf, value, batch_size(args, kwargs))
        else:
            keep = torch.device("cpu") if self.compute_on_cpu else None
            for p in self._function_sources:
                window.add_rows(p, as_rows(values[p], name=self._owners[p], device=keep))

    def _compute(
        self, trainer: Trainer, pl_module: LightningModule, stage: str, reset: bool
    ) -> dict[str, Any]:
        count = _num_dataloaders(trainer, stage)
        count = max([count] + [i + 1 for s, i in self._windows if s == stage])
        windows = [self._windows.setdefault((stage, i), Window()) for i in range(count)]
        # A rank without a batch of some loader must still join every collective; training
        # ranks step in lockstep, so only validation and test ask.
        exchange = stage != "train"
        local = [
            (window.batches, self._shapes(stage, idx, window) if exchange else Shapes())
            for idx, window in enumerate(windows)
        ]
        batches, shapes = agree(local, exchange)
        results: dict[str, Any] = {}
        for idx, window in enumerate(windows):
            if not batches[idx]:
                continue
            suffix = f"/dataloader_idx_{idx}" if count > 1 else ""
            functions = self._function_values(window, shapes[idx], pl_module, stage)
            live = self._copies.get(stage, idx, pl_module.device) if self._copies else {}
            shapes[idx].fill_empty_lists(live, pl_module.device)
            for leaf, spec in self._leaves.items():
                if spec.torchmetric:
                    values = flatten_result(leaf, live[leaf].compute())
                    if reset:
                        live[leaf].reset()
                else:
                    values = {leaf: functions[leaf]} if leaf in functions else {}
                for key, value in values.items():
                    results[f"{key}/{stage}{suffix}"] = value
            if reset:
                window.clear()
        return results

    def _shapes(self, stage: str, idx: int, window: Window) -> Shapes:
        shapes = Shapes(rows={p: spec_of(rows[0]) for p, rows in window.rows.items()})
        live = self._copies.get(stage, idx) if self._copies else {}
        for leaf, metric in live.items():
            shapes.add_list_states(leaf, metric)
        return shapes

    def _function_values(
        self, window: Window, shapes: Shapes, pl_module: LightningModule, stage: str
    ) -> dict[str, float]:
        if not self._functions:
            return {}
        device = collective_device(pl_module)
        if self._per_step[stage]:
            local = {leaf: window.sums.get(leaf, [0.0, 0.0]) for leaf in self._functions}
            sums = sum_over_ranks(local, device)
            return {leaf: total / weight for leaf, (total, weight) in sums.items() if weight > 0}
        arrays = {}
        for p in self._function_sources:
            rows = window.concatenated(p)
            if rows is None:
                dtype, shape = shapes.rows[p]
                rows = torch.empty((0, *shape), dtype=dtype)
            arrays[p] = to_numpy(distributed.gather_uneven(rows.to(device)))
        self._warn_non_finite_arrays(pl_module.trainer, stage, arrays)
        values = {}
        for leaf in self._functions:
            spec = self._leaves[leaf]
            args, kwargs = arguments(spec.needs, arrays)
            values[leaf] = scalar(spec.metric(*args, **kwargs), name=leaf)
        return values

    # ------------------------------------------------------------- bad inputs

    def _check_inputs(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Report this epoch's bad inputs of the torchmetrics (every rank calls it together:
        one collective and one host sync, none when there is nothing to check)."""
        if not self._checks:
            return
        count = _num_dataloaders(trainer, stage)
        for idx, report in enumerate(self._checks.read(stage, count, collective_device(pl_module))):
            self._report(trainer, stage, idx, count, report)

    def _report(
        self, trainer: Trainer, stage: str, idx: int, count: int, report: EpochReport
    ) -> None:
        where = f"{stage}" + (f" dataloader {idx}" if count > 1 else "")
        for position, values in report.non_finite.items():
            users = [
                leaf
                for leaf, spec in self._leaves.items()
                if spec.torchmetric and position in spec.needs.sources()
            ]
            self._warn_non_finite(trainer, where, position, users, values)
        if report.labels:
            bad = report.labels[0]
            source = self._sources[bad.check.position]
            raise ValueError(labels_message(self.state_key, bad, source, where))

    def _raise_for_labels(
        self, leaf: str, stage: str, tensors: list[Any], metric: Any, error: Exception
    ) -> None:
        """Replace a crashed update's error by the label error when labels are the cause
        (a host sync, on the way out only)."""
        for check in self._checks.labels:
            if check.metric == leaf:
                bad = batch_label_report(check, tensors[check.position], metric)
                if bad is not None:
                    source = self._sources[check.position]
                    raise ValueError(labels_message(self.state_key, bad, source, stage)) from error

    def _warn_non_finite_arrays(
        self, trainer: Trainer, stage: str, arrays: Mapping[int, Any]
    ) -> None:
        """Warn about NaN/inf in the numpy inputs of the metric functions (host arrays)."""
        for position, array in arrays.items():
            if not isinstance(array, np.ndarray) or array.dtype.kind not in "fc":
                continue
            values = int(array.size - np.count_nonzero(np.isfinite(array)))
            if values:
                users = [
                    leaf
                    for leaf in self._functions
                    if position in self._leaves[leaf].needs.sources()
                ]
                self._warn_non_finite(trainer, stage, position, users, values)

    def _warn_non_finite(
        self, trainer: Trainer, where: str, position: int, users: list[str], values: int
    ) -> None:
        names = ", ".join(map(repr, users))
        source = describe_source(self._sources[position])
        self.warn_once(
            trainer,
            f"non-finite-{where}-{position}-{names}",
            f"{values} NaN/inf value(s) of {source} reached metric"
            f"{'s' if len(users) > 1 else ''} {names} during {where}: the logged value may be "
            "nan or meaningless",
        )

    # ---------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Counters and this rank's open training window."""
        return {
            "train_batches": self.train_batches,
            "train_epochs": self.train_epochs,
            "val_runs": self.val_runs,
            "train_window": self._train_window(synchronise=False),
        }

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Lightning calls this on every rank but writes rank 0's checkpoint: put every rank's
        # part of the open window in it, so that nothing is lost on resume.
        if distributed.is_distributed():
            state = checkpoint.setdefault("callbacks", {}).setdefault(self.state_key, {})
            state["train_window"] = self._train_window(synchronise=True, pl_module=pl_module)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the counters and the open training window.

        The window's contents go to rank 0 only: under DDP it holds every rank's part.
        """
        self.train_batches = int(state_dict.get("train_batches", 0))
        self.train_epochs = int(state_dict.get("train_epochs", 0))
        self.val_runs = int(state_dict.get("val_runs", 0))
        saved = state_dict.get("train_window")
        if not saved or not saved["batches"]:
            return
        window = Window()
        if distributed.rank() == 0:
            window.load_state_dict(saved)
            live = self._copies.get("train", 0) if self._copies else {}
            for leaf, states in saved["torchmetrics"].items():
                if leaf in live:
                    restore_states(live[leaf], states)
        window.batches = int(saved["batches"])
        self._windows[("train", 0)] = window

    def _train_window(
        self, synchronise: bool, pl_module: LightningModule | None = None
    ) -> dict[str, Any]:
        window = self._windows.get(("train", 0)) or Window()
        state = window.state_dict()
        state["torchmetrics"] = {}
        if not window.batches:
            return state
        if self._copies:
            live = self._copies.get("train", 0)
            for leaf, metric in live.items():
                with metric.sync_context(should_sync=synchronise, should_unsync=True):
                    state["torchmetrics"][leaf] = states_on_cpu(metric)
        if synchronise:
            assert pl_module is not None
            device = collective_device(pl_module)
            state["sums"] = sum_over_ranks(state["sums"], device)
            state["rows"] = {
                p: distributed.gather_uneven(rows.to(device)).cpu()
                for p, rows in state["rows"].items()
            }
        return state


def _check_every(argument: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{argument} must be an int or None, got {value!r}")
    if value < 0:
        raise ValueError(f"{argument} must be >= 0 (0 or None: never), got {value}")


def _leaves(metrics: Any, needs: Any, *, owner: str) -> tuple[dict[str, Any], dict[str, Needs]]:
    """Every single metric (collections unpacked) by logged name, and its resolved needs."""
    if isinstance(metrics, MetricCollection):
        metrics = [metrics]
    named = named_metrics(metrics, owner=owner)
    if not named:
        raise ValueError(f"metrics must name at least one metric, got {metrics!r}")
    for name, metric in named.items():
        if isinstance(metric, type) or not callable(metric):
            raise TypeError(
                f"metrics[{name!r}] must be a torchmetrics Metric, a scikit-learn metric or a "
                f"function (an instance, not a class), got {metric!r}"
            )
    specs = split_needs(list(named), needs)
    entries: list[tuple[str, Any, Any]] = []
    for name, metric in named.items():
        if isinstance(metric, MetricCollection):
            for key, member in metric.items(keep_base=False, copy_state=True):
                leaf = f"{name}_{key}" if isinstance(metrics, Mapping) else str(key)
                entries.append((leaf, member, specs[name]))
        else:
            entries.append((name, metric, specs[name]))
    names = unique_names(leaf for leaf, _, _ in entries)
    leaves, resolved = {}, {}
    for name, (_, metric, spec) in zip(names, entries, strict=True):
        leaves[name] = metric
        resolved[name] = bind_needs(metric, spec, name=name)
    return leaves, resolved


def _input_checks(leaves: Mapping[str, _Leaf]) -> InputChecks:
    """Checks of the torchmetrics' inputs: every source they take for finiteness, and the
    ``target`` of each metric with an integer ``num_classes`` against it."""
    metrics = {leaf: spec for leaf, spec in leaves.items() if spec.torchmetric}
    positions = sorted({p for spec in metrics.values() for p in spec.needs.sources()})
    labels = []
    for leaf, spec in metrics.items():
        position = label_position(spec.metric, spec.needs)
        if position is not None:
            labels.append(LabelCheck(leaf, position, spec.metric.num_classes))
    return InputChecks(positions, labels)


def _owners(indexed: Mapping[str, Needs], state_key: str) -> list[str]:
    """For each source position, who to name when its key is missing."""
    users: dict[int, list[str]] = {}
    for leaf, needs in indexed.items():
        for p in needs.sources():
            users.setdefault(p, [])
            if leaf not in users[p]:
                users[p].append(leaf)
    return [
        f"{state_key} (metric{'s' if len(users[p]) > 1 else ''} {', '.join(map(repr, users[p]))})"
        for p in range(len(users))
    ]


def _num_dataloaders(trainer: Trainer, stage: str) -> int:
    if stage == "train":
        return 1
    counts = trainer.num_val_batches if stage == "val" else trainer.num_test_batches
    return len(counts) if isinstance(counts, list) else 1


def _is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray)
