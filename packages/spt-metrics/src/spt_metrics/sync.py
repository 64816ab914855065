"""What ``MetricsCallback`` exchanges between ranks, beyond what torchmetrics syncs itself.

Without a process group every function here is the single-process identity, so the callback
calls them unconditionally.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule
from torch import Tensor
from torchmetrics import Metric

from spt_core import distributed

Spec = tuple[torch.dtype, tuple[int, ...]]
"""The dtype and the shape of one row of a batch-first tensor."""


def spec_of(rows: Tensor) -> Spec:
    """The :data:`Spec` of a batch-first tensor.

    Example:
        >>> spec_of(torch.zeros(5, 3))
        (torch.float32, (3,))
    """
    return rows.dtype, tuple(rows.shape[1:])


@dataclass
class Shapes:
    """Row specs that let a rank without a batch take part in the collectives.

    Args:
        rows: Outputs kept in exact mode, by source position.
        lists: torchmetrics list states, by ``(metric_name, state_name)`` (torchmetrics cannot
            synchronise a list that is empty on one rank).
    """

    rows: dict[int, Spec] = field(default_factory=dict)
    lists: dict[tuple[str, str], Spec] = field(default_factory=dict)

    @staticmethod
    def merge(every: Iterable[Shapes]) -> Shapes:
        """Union over ranks (ranks that have a spec agree on it)."""
        merged = Shapes()
        for shapes in every:
            merged.rows.update(shapes.rows)
            merged.lists.update(shapes.lists)
        return merged

    def add_list_states(self, name: str, metric: Metric) -> None:
        """Record the row spec of every non-empty list state of ``metric``."""
        for key, value in metric.metric_state.items():
            if isinstance(value, list) and value:
                self.lists[(name, key)] = spec_of(value[0])

    def fill_empty_lists(self, live: Mapping[str, Metric], device: torch.device) -> None:
        """Give each empty list state of ``live`` one empty tensor of the agreed spec."""
        for (name, key), (dtype, shape) in self.lists.items():
            if not getattr(live[name], key):
                setattr(live[name], key, [torch.empty((0, *shape), dtype=dtype, device=device)])


def agree(local: list[tuple[int, Shapes]], exchange: bool) -> tuple[list[int], list[Shapes]]:
    """Batches per dataloader summed over ranks, and the merged shapes, per dataloader.

    Args:
        local: This rank's ``(batches, shapes)`` for every dataloader.
        exchange: Whether to ask the other ranks (one ``all_gather_object``); ``False`` when
            they are known to hold the same counts (training ranks step in lockstep).

    Example:
        >>> agree([(3, Shapes())], exchange=False)
        ([3], [Shapes(rows={}, lists={})])
    """
    everyone: list[Any] = [local]
    if exchange and distributed.is_distributed():
        everyone = [None] * distributed.world_size()
        dist.all_gather_object(everyone, local)
    batches = [sum(rank[i][0] for rank in everyone) for i in range(len(local))]
    shapes = [Shapes.merge(rank[i][1] for rank in everyone) for i in range(len(local))]
    return batches, shapes


def collective_device(pl_module: LightningModule) -> torch.device:
    """Where a collective runs: the CPU with gloo or without a process group, else the
    module's device (NCCL needs CUDA tensors)."""
    if distributed.is_distributed() and dist.get_backend() != "gloo":
        return pl_module.device
    return torch.device("cpu")


def sum_over_ranks(sums: dict[str, list[float]], device: torch.device) -> dict[str, list[float]]:
    """Per-step sums ``{name: [sum of weight * value, sum of weights]}`` added over ranks.

    Example:
        >>> sum_over_ranks({"acc": [3.0, 4.0]}, torch.device("cpu"))
        {'acc': [3.0, 4.0]}
    """
    if not sums:
        return {}
    names = list(sums)
    table = torch.tensor([sums[n] for n in names], dtype=torch.float64, device=device)
    distributed.all_reduce_mean([table])
    totals = (table * distributed.world_size()).tolist()
    return dict(zip(names, totals, strict=True))


def states_on_cpu(metric: Metric) -> dict[str, Any]:
    """A torchmetrics object's states on the CPU, list states concatenated."""
    states = {}
    for key, value in metric.metric_state.items():
        if isinstance(value, list):
            value = torch.cat([v.reshape(-1, *v.shape[1:]) for v in value]) if value else []
        states[key] = value.detach().cpu().clone() if isinstance(value, Tensor) else value
    return states


def restore_states(metric: Metric, states: Mapping[str, Any]) -> None:
    """Put saved states into a freshly reset torchmetrics object, as its own loader does.

    Exact for states reduced by sum, concatenation, max or min (rank 0 holds the sum of every
    rank's part, the others their defaults); a state reduced by mean is not.
    """
    for key, value in states.items():
        if isinstance(metric.metric_state[key], list):
            value = [value] if isinstance(value, Tensor) else list(value)
        setattr(metric, key, value)
