"""The metric copies a ``MetricsCallback`` updates, per stage and dataloader, and what they
hold between two computations (the *window*)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Trainer
from torch import Tensor
from torchmetrics import Metric

from spt_core import StageMetrics
from spt_core.metric_states import load_metric_states, metric_states
from spt_metrics._convert import as_rows, flatten_result, to_numpy
from spt_metrics._leaves import Plan
from spt_metrics._ranks import Spec, agree, spec_of, zero_rows
from spt_metrics._reports import InputReports
from spt_metrics.needs import arguments, fetch

Key = tuple[str, int]  # (stage, dataloader_idx)


class Collector:
    """The metrics of one ``MetricsCallback``: a copy of each per (stage, dataloader), the
    batches each saw since it was last computed (the *window*), and the checks of its inputs.

    Functions are wrapped in :class:`~spt_metrics.FunctionMetric` (per-step or exact, as
    ``per_step`` says for the stage), so that every copy is a torchmetrics ``Metric`` whose
    states torchmetrics synchronises and a checkpoint can hold. The torchmetrics copies
    follow the module's device; the function copies stay on the CPU, where their inputs and
    per-step values are.

    Args:
        plan: The metrics and their sources.
        per_step: Per stage, whether functions are computed per step.
        compute_on_cpu: Keep the rows of exact mode on the CPU.
        owner: The callback's ``state_key``, for messages.
        say: Logs one line of this rank under the callback's name (``SPTCallback.info``).

    Example:
        >>> plan = Plan({"hits": lambda p, t: float((p == t).mean())}, ["p", "t"], owner="demo")
        >>> collector = Collector(plan, {"val": False}, False, owner="demo", say=print)
        >>> cpu = torch.device("cpu")
        >>> first = {"p": torch.tensor([1, 2]), "t": torch.tensor([1, 0])}
        >>> collector.update("val", 0, first, None, cpu)
        >>> collector.update("val", 0, {"p": torch.tensor([3]), "t": torch.tensor([3])}, None, cpu)
        >>> collector.compute("val", 1, cpu, exchange=True, collective_device=cpu, reset=True)
        {'hits/val': tensor(0.6667)}
    """

    def __init__(
        self,
        plan: Plan,
        per_step: Mapping[str, bool],
        compute_on_cpu: bool,
        *,
        owner: str,
        say: Callable[[str], None],
    ) -> None:
        self.plan = plan
        self.per_step = dict(per_step)
        self.compute_on_cpu = compute_on_cpu
        self.reports = InputReports(plan, owner=owner)
        self.say = say
        # A stage takes its copies from the prototypes of its mode (created on first use).
        self._modes = {
            mode: StageMetrics(
                {
                    name: leaf.prototype(name, mode, compute_on_cpu)
                    for name, leaf in plan.leaves.items()
                }
            )
            for mode in (True, False)
            if mode in self.per_step.values()
        }
        self._exposed: dict[str, dict[str, Metric]] = {}
        self.batches: dict[Key, int] = {}
        self.specs: dict[Key, dict[int, Spec]] = {}

    def live(self, stage: str, idx: int, device: torch.device | None = None) -> dict[str, Metric]:
        """The copies of ``(stage, idx)``; the torchmetrics ones moved to ``device``."""
        live = self._modes[self.per_step[stage]].get(stage, idx)
        self._exposed.setdefault(f"{stage}/{idx}", live)
        if device is not None:
            for name, metric in live.items():
                if self.plan.leaves[name].torchmetric and metric.device != device:
                    metric.to(device)
        return live

    def all_live(self) -> dict[str, dict[str, Metric]]:
        """Every copy, keyed ``"{stage}/{dataloader_idx}"`` (for ``callbacks_metrics``): one
        dict that gains the copies of a (stage, dataloader) when they are created."""
        return self._exposed

    def update(self, stage: str, idx: int, outputs: Any, batch: Any, device: torch.device) -> None:
        """Feed one batch to the copies of ``(stage, idx)``.

        Each source is read once from ``outputs`` (else ``batch``) and converted once:
        torchmetrics metrics get tensors on ``device``; functions numpy arrays (per-step
        mode) or rows (exact mode).

        Raises:
            KeyError: If a key is missing (the message names the metrics that need it).
            ValueError: If an update crashes on labels outside a metric's ``num_classes``.
        """
        plan, key = self.plan, (stage, idx)
        values = [
            fetch(source, outputs, batch, owner=plan.owners[p])
            for p, source in enumerate(plan.sources)
        ]
        tensors = [torch.as_tensor(v, device=device) if _is_array(v) else v for v in values]
        live = self.live(stage, idx, device)
        self.batches[key] = self.batches.get(key, 0) + 1
        self._note_specs(self.specs.setdefault(key, {}), tensors)
        self.reports.update(stage, idx, tensors, live, device)
        if self.per_step[stage]:
            arrays = {p: to_numpy(values[p]) for p in plan.function_sources}
        else:
            keep = torch.device("cpu") if self.compute_on_cpu else None
            arrays = {
                p: as_rows(values[p], name=plan.owners[p], device=keep)
                for p in plan.function_sources
            }
        for name, metric in live.items():
            leaf = plan.leaves[name]
            args, kwargs = arguments(leaf.needs, tensors if leaf.torchmetric else arrays)
            try:
                metric.update(*args, **kwargs)
            except Exception as error:
                self.reports.raise_for_labels(name, stage, tensors, metric, error)
                raise

    @staticmethod
    def _note_specs(specs: dict[int, Spec], values: list[Any]) -> None:
        if len(specs) < len(values):
            for position, value in enumerate(values):
                spec = spec_of(value)
                if spec is not None:
                    specs.setdefault(position, spec)

    def compute(
        self,
        stage: str,
        num_dataloaders: int,
        device: torch.device,
        exchange: bool,
        collective_device: torch.device,
        reset: bool,
    ) -> dict[str, Tensor]:
        """Compute the copies of every dataloader of ``stage`` that some rank updated.

        Every rank calls it together. A rank that saw no batch of a loader another rank saw
        first gives the copies with list states zero rows of the agreed specs (a metric
        that refuses them is named in a log line of that rank: its sync may then fail).

        Args:
            stage: The stage.
            num_dataloaders: The stage's loaders (more if a higher index was seen).
            device: The module's device.
            exchange: Whether the ranks may have seen different batches (see
                :func:`spt_metrics._ranks.agree`).
            collective_device: Where collectives run.
            reset: Reset the copies and the window afterwards.

        Returns:
            ``{"{name}/{stage}[/dataloader_idx_{i}]": value}``.
        """
        seen = [idx + 1 for known, idx in self.batches if known == stage]
        keys = [(stage, idx) for idx in range(max([num_dataloaders, *seen]))]
        num_dataloaders = len(keys)
        local = [(self.batches.get(key, 0), self.specs.get(key, {})) for key in keys]
        batches, specs = agree(local, len(self.plan.sources), exchange, collective_device)
        results: dict[str, Tensor] = {}
        for idx, key in enumerate(keys):
            if not batches[idx]:
                continue
            live = self.live(stage, idx, device)
            if not local[idx][0]:
                self._give_zero_rows(live, zero_rows(specs[idx], device))
            suffix = f"/dataloader_idx_{idx}" if num_dataloaders > 1 else ""
            for name, metric in live.items():
                for flat, value in flatten_result(name, metric.compute()).items():
                    results[f"{flat}/{stage}{suffix}"] = value.to(device)
                if reset:
                    metric.reset()
            if reset:
                self.batches.pop(key, None)
                self.specs.pop(key, None)
        return results

    def _give_zero_rows(self, live: Mapping[str, Metric], empty: Mapping[int, Tensor]) -> None:
        for name, metric in live.items():
            if not any(isinstance(state, list) for state in metric.metric_state.values()):
                continue  # tensor states synchronise from their defaults
            needs = self.plan.leaves[name].needs
            if not all(p in empty for p in needs.sources()):
                continue
            args, kwargs = arguments(needs, empty)
            try:
                metric.update(*args, **kwargs)
            except Exception as error:  # the metric's own input checks
                self.say(
                    f"metric {name!r} refused the zero-row batch that lets a rank without rows "
                    f"join its synchronisation ({error}); the other ranks may wait for it"
                )

    # ---------------------------------------------------------------- checkpoints

    def train_window(self, synchronise: bool) -> dict[str, Any]:
        """The open training window: its batch count and each copy's states on the CPU.

        With ``synchronise`` (every rank together, under DDP) the states are every rank's,
        reduced by torchmetrics' own sync; without, this rank's (no communication).
        """
        batches = self.batches.get(("train", 0), 0)
        window: dict[str, Any] = {"batches": batches, "metrics": {}}
        if batches:
            for name, metric in self.live("train", 0).items():
                window["metrics"][name] = metric_states(metric, synchronise=synchronise)
        return window

    def drop_train_window(self) -> None:
        """Forget the open training window (no communication)."""
        for metric in self.live("train", 0).values():
            metric.reset()
        self.batches.pop(("train", 0), None)
        self.specs.pop(("train", 0), None)

    def load_train_window(self, window: Mapping[str, Any], with_states: bool) -> None:
        """Restore :meth:`train_window`'s output; the states only ``with_states`` (one rank
        takes the states that every rank's part was reduced into)."""
        batches = int(window.get("batches", 0))
        if not batches:
            return
        self.batches[("train", 0)] = batches
        if with_states:
            live = self.live("train", 0)
            for name, states in window.get("metrics", {}).items():
                if name not in live or not load_metric_states(live[name], states):
                    self.say(f"the checkpoint's window of {name!r} does not fit it: not restored")


def _is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray)


def num_dataloaders(trainer: Trainer, stage: str) -> int:
    """How many loaders ``stage`` has in ``trainer`` (1 for training)."""
    if stage == "train":
        return 1
    counts = trainer.num_val_batches if stage == "val" else trainer.num_test_batches
    return len(counts) if isinstance(counts, list) else 1
