"""The states of torchmetrics-style metrics, read and restored for a checkpoint written in the
middle of an epoch.

A metric whose states can be kept has torchmetrics' ``metric_state``, ``sync_context`` and
``load_state_dict`` (in itself, or in the submodules a wrapper or a composition holds).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["load_metric_states", "metric_states"]

_STATEFUL = ("metric_state", "sync_context", "load_state_dict")  # torchmetrics' Metric has them


def metric_states(metric: Any, *, synchronise: bool = False) -> dict[str, Any] | None:
    """A torchmetrics-style metric's states, detached on the CPU, for a checkpoint.

    The states of a wrapper's or a composition's inner metrics (its submodules with states)
    are included, keyed ``"{submodule}.{state}"``, as ``load_state_dict`` expects them.

    Args:
        metric: The metric.
        synchronise: Hold every rank's part, reduced by the metric's own sync (every rank
            calls it together under DDP); ``False`` holds this rank's part, without any
            communication.

    Returns:
        ``{state: tensor}``, a list state as a list: one concatenated tensor for a state
        reduced by concatenation whose entries share their trailing shape, else its entries;
        ``None`` for a metric without ``metric_state``, ``sync_context`` and
        ``load_state_dict`` (in itself or a submodule), whose states cannot be kept.

    Example:
        >>> import contextlib
        >>> class Rows:  # the parts of a torchmetrics Metric that hold its states
        ...     metric_state = {"count": torch.tensor(2), "rows": [torch.ones(1), torch.zeros(1)]}
        ...     def sync_context(self, **kwargs): return contextlib.nullcontext()
        ...     def load_state_dict(self, states, strict): self.metric_state = dict(states)
        >>> metric_states(Rows())  # without torchmetrics' "cat" reduction: entry by entry
        {'count': tensor(2), 'rows': [tensor([1.]), tensor([0.])]}
        >>> metric_states(object()) is None
        True
    """
    named = metric.named_modules() if hasattr(metric, "named_modules") else [("", metric)]
    parts = [(name, part) for name, part in named if all(hasattr(part, a) for a in _STATEFUL)]
    if not parts:
        return None
    states: dict[str, Any] = {}
    for name, part in parts:  # in registration order: the same syncs on every rank
        prefix = f"{name}." if name else ""
        states.update({prefix + key: v for key, v in _own_states(part, synchronise).items()})
    return states


def _own_states(metric: Any, synchronise: bool) -> dict[str, Any]:
    lists = {key for key, value in metric.metric_state.items() if isinstance(value, list)}
    states: dict[str, Any] = {}
    sync = getattr(metric, "dist_sync_fn", None)
    with metric.sync_context(dist_sync_fn=sync, should_sync=synchronise):
        for key, value in metric.metric_state.items():
            if key not in lists:
                states[key] = value.detach().cpu().clone()
            else:  # a list of tensors (or none), which a sync concatenates into one
                parts = [value] if isinstance(value, Tensor) else value
                rows = [part.detach().cpu() for part in parts]
                if _concatenated(metric, key) and len({r.shape[1:] for r in rows}) == 1:
                    rows = [torch.cat([torch.atleast_1d(row) for row in rows])]
                states[key] = rows
    return states


def _concatenated(metric: Any, key: str) -> bool:
    """Whether list state ``key`` is reduced by concatenation (torchmetrics' ``"cat"``), so its
    entries may be kept as one tensor; other list states keep one entry per update."""
    reduction = getattr(metric, "_reductions", {}).get(key)
    return getattr(reduction, "__name__", None) == "dim_zero_cat"


def load_metric_states(metric: Any, states: Mapping[str, Any]) -> bool:
    """Restore :func:`metric_states`' output into ``metric``, on the metric's device.

    Args:
        metric: A metric of the same kind (torchmetrics' ``load_state_dict``).
        states: What :func:`metric_states` returned.

    Returns:
        Whether they were restored: nothing is when their names, kinds (tensor or list) or
        tensor shapes differ from the metric's own (the states of another metric).

    Example:
        >>> import contextlib
        >>> class Count:
        ...     def __init__(self): self.metric_state = {"count": torch.tensor(0)}
        ...     def sync_context(self, **kwargs): return contextlib.nullcontext()
        ...     def load_state_dict(self, states, strict): self.metric_state = dict(states)
        >>> count = Count()
        >>> load_metric_states(count, {"count": torch.tensor(2)}), count.metric_state
        (True, {'count': tensor(2)})
        >>> load_metric_states(count, {"count": torch.ones(3)})  # another metric's
        False
    """
    own = metric_states(metric)
    if own is None or not _same_layout(own, states):
        return False
    device = getattr(metric, "device", None)
    moved = {
        key: [v.to(device) for v in value] if isinstance(value, list) else value.to(device)
        for key, value in states.items()
    }
    metric.load_state_dict(moved, strict=False)
    return True


def _same_layout(own: Mapping[str, Any], saved: Mapping[str, Any]) -> bool:
    if own.keys() != saved.keys():
        return False
    for key, value in own.items():
        other = saved[key]
        if isinstance(value, list) != isinstance(other, list):
            return False
        if isinstance(value, list):
            if value and other and value[0].shape[1:] != other[0].shape[1:]:
                return False
        elif value.shape != other.shape:
            return False
    return True
