"""What ``MetricsCallback`` resolves once, at construction: every single metric (collections
unpacked) by logged name, where its inputs come from, and the checks of what it receives."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torchmetrics import Metric, MetricCollection

from spt_core import named_metrics, unique_names
from spt_metrics.checks import InputChecks, LabelCheck, label_position
from spt_metrics.function_metric import FunctionMetric
from spt_metrics.needs import Needs, bind_needs, index_sources, split_needs

__all__ = ["Leaf", "Plan"]


@dataclass(frozen=True)
class Leaf:
    """One logged metric.

    Args:
        metric: What the user gave (a torchmetrics ``Metric`` or a function).
        needs: Its inputs, as positions in :attr:`Plan.sources`.
        torchmetric: Whether ``metric`` is a torchmetrics ``Metric`` (else it is wrapped in a
            :class:`~spt_metrics.FunctionMetric`).
    """

    metric: Any
    needs: Needs
    torchmetric: bool

    def prototype(self, name: str, per_step: bool, compute_on_cpu: bool) -> Metric:
        """The Metric whose copies are updated: the metric itself, or the function wrapped."""
        if self.torchmetric:
            return self.metric
        return FunctionMetric(
            self.metric,
            num_args=len(self.needs.args),
            keywords=tuple(self.needs.kwargs),
            per_step=per_step,
            compute_on_cpu=compute_on_cpu,
            name=name,
        )


class Plan:
    """The metrics, their sources and their checks, resolved from ``metrics`` and ``needs``.

    Args:
        metrics: As ``MetricsCallback`` takes them.
        needs: As ``MetricsCallback`` takes it.
        owner: The callback's ``state_key``, for error messages.

    Raises:
        TypeError: If a metric is not a torchmetrics ``Metric``, a scikit-learn metric or a
            function (an instance, not a class).
        ValueError: If there is no metric; see :func:`spt_metrics.needs.split_needs`.

    Example:
        >>> plan = Plan({"gap": lambda score, target: 0.0}, None, owner="demo")
        >>> plan.sources, plan.owners[0]
        (['score', 'target'], "demo (metric 'gap')")
        >>> plan.leaves["gap"].needs
        Needs(args=(), kwargs={'score': 0, 'target': 1})
    """

    def __init__(self, metrics: Any, needs: Any, *, owner: str) -> None:
        self.metrics, self.needs = _named_leaves(metrics, needs, owner=owner)
        self.sources, indexed = index_sources(self.needs)
        self.leaves = {
            name: Leaf(metric, indexed[name], isinstance(metric, Metric))
            for name, metric in self.metrics.items()
        }
        self.owners = [_owner(owner, self.users(p)) for p in range(len(self.sources))]
        self.function_sources = sorted(
            {
                p
                for leaf in self.leaves.values()
                if not leaf.torchmetric
                for p in leaf.needs.sources()
            }
        )

    def users(self, position: int) -> list[str]:
        """The metrics that take the source at ``position``."""
        return [name for name, leaf in self.leaves.items() if position in leaf.needs.sources()]

    def input_checks(self) -> InputChecks:
        """Checks of every source for finiteness, and of the ``target`` of each torchmetrics
        metric with an integer ``num_classes`` against it."""
        labels = []
        for name, leaf in self.leaves.items():
            position = label_position(leaf.metric, leaf.needs) if leaf.torchmetric else None
            if position is not None:
                labels.append(LabelCheck(name, position, leaf.metric.num_classes))
        return InputChecks(range(len(self.sources)), labels)


def _named_leaves(
    metrics: Any, needs: Any, *, owner: str
) -> tuple[dict[str, Any], dict[str, Needs]]:
    if isinstance(metrics, MetricCollection):
        metrics = [metrics]
    named = named_metrics(metrics, owner=owner)
    if not named:
        raise ValueError(f"{owner}: metrics must name at least one metric, got {metrics!r}")
    for name, metric in named.items():
        if isinstance(metric, type) or not callable(metric):
            raise TypeError(
                f"{owner}: metrics[{name!r}] must be a torchmetrics Metric, a scikit-learn "
                f"metric or a function (an instance, not a class), got {metric!r}"
            )
    with _named_by(owner):
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
        with _named_by(owner):
            resolved[name] = bind_needs(metric, spec, name=name)
    return leaves, resolved


@contextmanager
def _named_by(owner: str) -> Iterator[None]:
    """Re-raise a ``TypeError``/``ValueError`` of the ``needs`` checks with ``owner`` first."""
    try:
        yield
    except (TypeError, ValueError) as error:
        raise type(error)(f"{owner}: {error}") from error


def _owner(state_key: str, users: list[str]) -> str:
    """Who a missing key or a bad output names: the callback and the metrics that read it."""
    return f"{state_key} (metric{'s' if len(users) > 1 else ''} {', '.join(map(repr, users))})"
