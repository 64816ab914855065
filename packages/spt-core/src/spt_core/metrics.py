"""Per-stage copies of metric objects, shared by the callbacks.

Nothing here imports torchmetrics: a metric is anything with ``update``/``compute``/``reset``
(and optionally ``clone`` and ``to``); see :mod:`spt_core.metric_states` for the states a
checkpoint can keep.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from typing import Any

import torch
from torch import Tensor

from spt_core import distributed
from spt_core.metric_states import load_metric_states, metric_states

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

    def states(
        self,
        stage: str,
        dataloader_idx: int = 0,
        *,
        synchronise: bool = False,
        device: torch.device | None = None,
    ) -> dict[str, dict[str, Any]]:
        """The states of the copies of ``(stage, dataloader_idx)``, for a checkpoint written
        in the middle of an epoch (see :func:`metric_states`).

        Args:
            stage: The stage, e.g. ``"train"``.
            dataloader_idx: The loader.
            synchronise: Every rank's part (every rank calls it together: one collective on
                ``device`` and one host sync, then each metric's sync); else this rank's.
            device: Where the collective runs (the module's device).

        Returns:
            ``{name: states}`` of the copies whose states can be kept; empty when no copy was
            updated since its last reset (on any rank, with ``synchronise``).

        Example:
            >>> from torchmetrics.aggregation import SumMetric
            >>> stages = StageMetrics({"total": SumMetric()})
            >>> stages.update("train", 0, torch.tensor([2.0, 3.0]))
            >>> saved = stages.states("train")
            >>> saved
            {'total': {'sum_value': tensor(5.)}}
            >>> resumed = StageMetrics({"total": SumMetric()})
            >>> resumed.load_states("train", 0, saved)
            []
            >>> resumed.update("train", 0, torch.tensor([1.0]))
            >>> resumed.compute_and_reset("train", num_dataloaders=1)
            {'total': tensor(6.)}
        """
        updated = (stage, dataloader_idx) in self._updated
        if synchronise:
            flag = distributed.all_reduce_max_(torch.tensor([float(updated)], device=device))
            updated = bool(flag.item())
        if not updated:
            return {}
        live = self.get(stage, dataloader_idx, device).items()
        states = {name: metric_states(metric, synchronise=synchronise) for name, metric in live}
        return {name: state for name, state in states.items() if state is not None}

    def load_states(
        self, stage: str, dataloader_idx: int, states: Mapping[str, Mapping[str, Any]]
    ) -> list[str]:
        """Restore :meth:`states`' output into the copies of ``(stage, dataloader_idx)``.

        Under DDP, give the states of ``synchronise=True`` to one rank only: every rank's part
        is in them, and the next compute adds the other ranks' new parts.

        Args:
            stage: The stage.
            dataloader_idx: The loader.
            states: What :meth:`states` returned.

        Returns:
            The names whose states were not restored (no copy of that name, or one whose
            states differ in layout: see :func:`load_metric_states`); those copies start over.
        """
        if not states:
            return []
        live = self.get(stage, dataloader_idx)
        left = [name for name, state in states.items()
                if name not in live or not load_metric_states(live[name], state)]  # fmt: skip
        self._updated.add((stage, dataloader_idx))
        return left

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
