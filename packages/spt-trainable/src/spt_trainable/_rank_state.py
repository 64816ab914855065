"""What differs between DDP ranks in a trainable callback's state, made common for a
checkpoint (see :meth:`~spt_trainable.TrainableCallback.gather_checkpoint_state`).

Every rank calls each function together; the collectives depend only on the module's
structure. Without a process group each returns its input's values.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from spt_core import distributed


def mean_buffers(module: nn.Module, module_state: dict[str, Any]) -> dict[str, Any]:
    """``module_state`` (``module.state_dict()``) with its floating-point buffers replaced by
    their mean over the ranks (one collective per dtype, in the module's buffer order).

    Example:
        >>> bn = nn.BatchNorm1d(2)
        >>> mean_buffers(bn, bn.state_dict())["running_var"].tolist()
        [1.0, 1.0]
    """
    names = [
        name
        for name, buffer in module.named_buffers()
        if buffer.is_floating_point() and name in module_state
    ]
    means = [module_state[name].detach().clone() for name in names]
    distributed.all_reduce_mean(means)
    module_state = copy.copy(module_state)  # keeps the ``_metadata`` load_state_dict reads
    module_state.update(zip(names, means, strict=True))
    return module_state


def mean_grads(
    params: Sequence[nn.Parameter],
    grads: Sequence[Tensor | None] | None,
    device: torch.device | None,
) -> list[Tensor] | None:
    """The mean over the ranks of an unfinished window's gradients of ``params`` (a rank
    without a gradient adds zeros, as the window's step would), ``None`` when no rank holds a
    window.

    Example:
        >>> weight = nn.Parameter(torch.zeros(2))
        >>> mean_grads([weight], [None], None)[0].tolist(), mean_grads([weight], None, None)
        ([0.0, 0.0], None)
    """
    if not distributed.any_rank(grads is not None, device):
        return None
    grads = list(grads) if grads is not None else [None] * len(params)
    means = [
        torch.zeros_like(p) if g is None else g.detach().clone()
        for p, g in zip(params, grads, strict=True)
    ]
    distributed.all_reduce_mean(means)
    return means


def rng_of_ranks(
    rng: dict[str, Any] | None, device: torch.device | None
) -> list[dict[str, Any]] | None:
    """Every rank's random stream state (``rng``, whose ``"cpu"`` and ``"device"`` entries are
    generator states), in rank order; ``None`` when a rank has none.

    Example:
        >>> state = {"cpu": torch.get_rng_state()}
        >>> torch.equal(rng_of_ranks(state, None)[0]["cpu"], state["cpu"])
        True
    """
    if distributed.any_rank(rng is None, device):
        return None
    parts = {key: rng[key] for key in ("cpu", "device") if key in rng}
    gathered = {
        key: distributed.gather_equal(value.to(device)[None]).cpu() for key, value in parts.items()
    }
    return [
        {**rng, **{key: rows[r].clone() for key, rows in gathered.items()}}
        for r in range(distributed.world_size())
    ]
