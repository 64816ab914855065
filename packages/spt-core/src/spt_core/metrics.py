"""Naming and per-stage copies of metric objects, shared by the spt callbacks.

Nothing here imports torchmetrics: a metric is anything with ``update``/``compute``/``reset``
(and optionally ``clone`` and ``to``), which torchmetrics' ``Metric`` provides.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from spt_core import distributed

_TASK_PREFIX = re.compile(r"^(multiclass|multilabel|binary)_")


def metric_name(metric: Any) -> str:
    """A readable snake_case name for a metric object, class or function.

    torchmetrics' task prefixes are dropped (``MulticlassAccuracy`` -> ``accuracy``) and a
    ``top_k`` above 1 is kept in the name, so top-1 and top-5 accuracy stay apart.

    Args:
        metric: A metric object (named by its class), a class or function (by its
            ``__name__``), or a ``functools.partial`` (by the function it wraps).

    Returns:
        The snake_case name, ``"lambda"`` for a lambda.

    Example:
        >>> import functools, operator
        >>> metric_name(operator.add), metric_name(functools.partial(operator.add, 1))
        ('add', 'add')
        >>> metric_name(lambda x: x)
        'lambda'
    """
    if isinstance(metric, functools.partial):
        return metric_name(metric.func)
    raw = getattr(metric, "__name__", None) or type(metric).__name__
    if raw == "<lambda>":
        return "lambda"
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", raw).lower()
    snake = _TASK_PREFIX.sub("", snake)
    top_k = getattr(metric, "top_k", None)
    if isinstance(top_k, int) and top_k > 1:
        snake = f"{snake}_top{top_k}"
    return snake


def unique_names(names: Iterable[str]) -> list[str]:
    """Make names unique by suffixing repeats with ``_2``, ``_3``...

    Args:
        names: The names, in order; the first of a repeated name keeps it unchanged.

    Returns:
        A new list, as long as ``names``, with no name twice.

    Raises:
        TypeError: If ``names`` is not an iterable of strings.

    Example:
        >>> unique_names(["acc", "acc", "f1", "acc"])
        ['acc', 'acc_2', 'f1', 'acc_3']
    """
    given = names
    names = list(names) if isinstance(names, Iterable) and not isinstance(names, str) else None
    if names is None or not all(isinstance(name, str) for name in names):
        raise TypeError(f"unique_names: names must be an iterable of strings, got {given!r}")
    taken: dict[str, None] = {}  # an ordered set
    for name in names:
        candidate, count = name, 1
        while candidate in taken:
            count += 1
            candidate = f"{name}_{count}"
        taken[candidate] = None
    return list(taken)


def named_metrics(metrics: Any, *, owner: str, argument: str = "metrics") -> dict[str, Any]:
    """Normalise a dict, list, tuple, single metric or ``None`` into a new ``{name: metric}``.

    Args:
        metrics: What the user passed; entries of a list or tuple, or a single metric, are
            named by :func:`metric_name` and made unique.
        owner: Who asks, for error messages.
        argument: The argument's name, for error messages.

    Returns:
        A new dict: a mapping's own keys, or the generated names in the given order; empty
        for ``None``.

    Raises:
        TypeError: If a key is not a string.
        ValueError: If a key is empty or contains ``/``.

    Example:
        >>> import operator
        >>> sorted(named_metrics([operator.add, operator.add], owner="demo"))
        ['add', 'add_2']
    """
    if metrics is None:
        return {}
    if isinstance(metrics, Mapping):
        for key in metrics:
            if not isinstance(key, str):
                raise TypeError(f"{owner}: {argument} keys must be strings, got {key!r}")
            if not key or "/" in key:
                raise ValueError(
                    f"{owner}: {argument} keys must be non-empty without '/', got {key!r}"
                )
        return dict(metrics)
    items = list(metrics) if isinstance(metrics, (list, tuple)) else [metrics]
    return dict(zip(unique_names(metric_name(m) for m in items), items, strict=True))


_UNLABELLED = -1


def _copy(metric: Any) -> Any:
    clone = getattr(metric, "clone", None)
    duplicate = clone() if callable(clone) else copy.deepcopy(metric)
    if hasattr(duplicate, "ignore_index") and duplicate.ignore_index is None:
        duplicate.ignore_index = _UNLABELLED
    reset = getattr(duplicate, "reset", None)
    if callable(reset):
        reset()
    return duplicate


class StageMetrics:
    """Independent copies of a set of metrics for every (stage, dataloader) pair.

    The prototypes are never updated; each ``(stage, dataloader_idx)`` gets its own clones
    on first use, so neither a validation run inside a training epoch nor a second
    validation loader mixes into another's value.

    Args:
        metrics: ``{name: metric}`` prototypes (see :func:`named_metrics`).

    Raises:
        TypeError: If ``metrics`` is not a mapping.

    Example:
        >>> class Mean:
        ...     def __init__(self): self.values = []
        ...     def update(self, x): self.values.append(x)
        ...     def compute(self): return torch.tensor(sum(self.values) / len(self.values))
        ...     def reset(self): self.values = []
        >>> stages = StageMetrics({"mean": Mean()})
        >>> stages.update("train", 0, 1.0); stages.update("train", 0, 3.0)
        >>> stages.update("val", 0, 10.0)
        >>> stages.compute_and_reset("train", num_dataloaders=1)
        {'mean': tensor(2.)}
    """

    def __init__(self, metrics: Mapping[str, Any]) -> None:
        if not isinstance(metrics, Mapping):
            raise TypeError(
                f"StageMetrics: metrics must be a dict {{name: metric}}, got {metrics!r}"
            )
        self.prototypes = dict(metrics)
        self._live: dict[tuple[str, int], dict[str, Any]] = {}
        self._updated: set[tuple[str, int]] = set()

    def __bool__(self) -> bool:
        return bool(self.prototypes)

    def get(
        self, stage: str, dataloader_idx: int = 0, device: torch.device | None = None
    ) -> dict[str, Any]:
        """The live copies for ``(stage, dataloader_idx)``, created (and moved) on first use."""
        if (stage, dataloader_idx) not in self._live:
            self._live[stage, dataloader_idx] = {n: _copy(m) for n, m in self.prototypes.items()}
        live = self._live[stage, dataloader_idx]
        if device is not None:
            for metric in live.values():
                mover = getattr(metric, "to", None)
                if callable(mover) and getattr(metric, "device", None) != device:
                    mover(device)
        return live

    def update(self, stage: str, dataloader_idx: int, *args: Any, **kwargs: Any) -> None:
        """Update every copy of ``(stage, dataloader_idx)`` with the same arguments."""
        for metric in self.get(stage, dataloader_idx).values():
            metric.update(*args, **kwargs)
        self._updated.add((stage, dataloader_idx))

    def update_labelled(
        self, stage: str, dataloader_idx: int, preds: Tensor, target: Tensor
    ) -> None:
        """Update every copy with the rows whose integer ``target`` is a class (``>= 0``).

        Unlabelled rows (negative labels) never reach a metric. A copy whose ``ignore_index``
        was left at ``None`` (torchmetrics' classification metrics) has it set to ``-1`` and
        receives negative labels as ``-1``, which torchmetrics leaves out itself: in most of its
        update paths with a boolean mask, a host sync per batch on an accelerator (the cost of
        any torchmetrics metric given an ``ignore_index``). Any other metric receives the
        labelled rows only, selected here by a boolean mask, at the same cost. Floating-point
        targets (regression, soft labels) pass unchanged.

        Example:
            >>> class Hits:  # counts correct rows; knows nothing of unlabelled ones
            ...     def __init__(self): self.hits = self.rows = 0
            ...     def update(self, preds, target):
            ...         self.hits += int((preds.argmax(1) == target).sum())
            ...         self.rows += len(target)
            ...     def compute(self): return torch.tensor(self.hits / self.rows)
            ...     def reset(self): self.hits = self.rows = 0
            >>> stages = StageMetrics({"acc": Hits()})
            >>> preds = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]])
            >>> stages.update_labelled("val", 0, preds, torch.tensor([0, -1, 1]))
            >>> stages.compute_and_reset("val", num_dataloaders=1)
            {'acc': tensor(1.)}
        """
        if target.is_floating_point() or target.is_complex():
            self.update(stage, dataloader_idx, preds, target)
            return
        labelled: Tensor | None = None
        for metric in self.get(stage, dataloader_idx).values():
            if getattr(metric, "ignore_index", None) == _UNLABELLED:
                metric.update(preds, target.clamp(min=_UNLABELLED))
                continue
            if labelled is None:
                labelled = target >= 0
            metric.update(preds[labelled], target[labelled])
        self._updated.add((stage, dataloader_idx))

    def all_live(self) -> dict[str, dict[str, Any]]:
        """Every live copy, keyed ``"{stage}/{dataloader_idx}"`` (for ``callbacks_metrics``)."""
        return {f"{stage}/{idx}": live for (stage, idx), live in self._live.items()}

    def compute_and_reset(
        self,
        stage: str,
        num_dataloaders: int,
        device: torch.device | None = None,
        skip: Collection[int] = (),
    ) -> dict[str, Tensor]:
        """Compute and reset every copy of ``stage`` that was updated on any rank (the ranks
        agree on which with one collective on ``device`` and one host sync).

        Args:
            skip: Dataloader indices whose copies are reset without being computed (the
                same on every rank), e.g. because their inputs were found unusable.

        Returns:
            ``{name: value}`` for a single dataloader; with several, names carry Lightning's
            suffix: ``{name}/dataloader_idx_{i}``. A loader no rank updated is left out.
        """
        updated = torch.tensor(
            [(stage, i) in self._updated for i in range(num_dataloaders)],
            dtype=torch.float32,
            device=device,
        )
        distributed.all_reduce_max_(updated)
        results: dict[str, Tensor] = {}
        for idx, flag in enumerate(updated.tolist()):
            if not flag:
                continue
            suffix = f"/dataloader_idx_{idx}" if num_dataloaders > 1 else ""
            for name, metric in self.get(stage, idx, None if idx in skip else device).items():
                if idx not in skip:
                    results[f"{name}{suffix}"] = torch.as_tensor(metric.compute())
                metric.reset()
            self._updated.discard((stage, idx))
        return results
