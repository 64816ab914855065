"""How ``MetricsCallback`` reports bad inputs: labels outside a metric's classes raise, NaN/inf
values warn once per epoch; both counted on the device and read once per epoch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from spt_metrics._leaves import Plan
from spt_metrics.checks import LabelReport, batch_label_report

__all__ = ["InputReports", "describe_source", "labels_message"]

Warn = Callable[[str, str], None]
"""``warn(topic, message)``: say ``message`` once per epoch and topic."""


class InputReports:
    """The input checks of one callback's metrics, and the messages they lead to.

    Args:
        plan: The callback's metrics and sources.
        owner: The callback's ``state_key``.

    Example:
        >>> from torchmetrics.classification import MulticlassAccuracy
        >>> plan = Plan({"acc": MulticlassAccuracy(num_classes=2)}, None, owner="demo")
        >>> reports = InputReports(plan, owner="demo")
        >>> reports.update("val", 0, [torch.tensor([[0.3, 0.7]]), torch.tensor([4])], {})
        >>> reports.read("val", 1, warn=print)
        Traceback (most recent call last):
        ...
        ValueError: demo: metric 'acc' got 1 val label(s) of key 'target' outside 0..1 ...
    """

    def __init__(self, plan: Plan, *, owner: str) -> None:
        self.plan = plan
        self.owner = owner
        self.checks = plan.input_checks()

    def update(
        self,
        stage: str,
        idx: int,
        values: Sequence[Any],
        live: Any,
        device: torch.device | None = None,
    ) -> None:
        """Count one batch's bad values on ``device`` (no host sync)."""
        self.checks.update(stage, idx, values, live, device)

    def read(
        self, stage: str, num_dataloaders: int, warn: Warn, device: torch.device | None = None
    ) -> None:
        """Report the epoch of ``stage`` over every rank (every rank calls it together; one
        collective, one host sync).

        Raises:
            ValueError: For labels outside a metric's ``num_classes``.
        """
        reports = self.checks.read(stage, num_dataloaders, device)
        for idx, report in enumerate(reports):
            where = stage + (f" dataloader {idx}" if num_dataloaders > 1 else "")
            for position, values in report.non_finite.items():
                self._warn_non_finite(warn, where, position, values)
            if report.labels:
                bad = report.labels[0]
                source = self.plan.sources[bad.check.position]
                raise ValueError(labels_message(self.owner, bad, source, where))

    def raise_for_labels(
        self, name: str, stage: str, values: Sequence[Any], metric: Any, error: Exception
    ) -> None:
        """Replace a crashed update's error by the label error when labels are the cause
        (a host sync, on the way out only)."""
        for check in self.checks.labels:
            if check.metric == name:
                bad = batch_label_report(check, values[check.position], metric)
                if bad is not None:
                    source = self.plan.sources[check.position]
                    raise ValueError(labels_message(self.owner, bad, source, stage)) from error

    def _warn_non_finite(self, warn: Warn, where: str, position: int, values: int) -> None:
        users = self.plan.users(position)
        names = ", ".join(map(repr, users))
        source = describe_source(self.plan.sources[position])
        warn(
            f"non-finite-{where}-{position}-{names}",
            f"{values} NaN/inf value(s) of {source} reached metric"
            f"{'s' if len(users) > 1 else ''} {names} during {where}: the logged value may be "
            "nan or meaningless",
        )


def describe_source(source: Any) -> str:
    """How an error names a source: ``key 'target'`` or ``source name_of_the_callable``.

    Example:
        >>> describe_source("target"), describe_source(len)
        ("key 'target'", 'source len')
    """
    if isinstance(source, str):
        return f"key {source!r}"
    return f"source {getattr(source, '__name__', repr(source))}"


def labels_message(owner: str, report: LabelReport, source: Any, where: str) -> str:
    """The error for labels outside a metric's classes.

    Example:
        >>> from spt_metrics.checks import LabelCheck
        >>> report = LabelReport(LabelCheck("acc", 1, 2), 1, 5, 5, ignore_index=-1)
        >>> labels_message("MetricsCallback[name=m]", report, "y", "val")[:80]
        "MetricsCallback[name=m]: metric 'acc' got 1 val label(s) of key 'y' outside 0..1"
    """
    check = report.check
    ignored = "" if report.ignore_index is None else f" or ignore_index={report.ignore_index}"
    return (
        f"{owner}: metric {check.metric!r} got {report.count} {where} label(s) of "
        f"{describe_source(source)} outside 0..{check.num_classes - 1}{ignored} (num_classes="
        f"{check.num_classes}): smallest {report.smallest}, largest {report.largest}; give the "
        "metric enough classes, or mark unlabelled rows with -1"
    )
