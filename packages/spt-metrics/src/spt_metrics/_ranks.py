"""What the ranks agree on before a validation or test value is computed: which loaders saw a
batch on some rank, and the dtype and row shape of every source, so that a rank without a
batch can give its metrics zero rows of the right kind (torchmetrics then gathers them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule
from torch import Tensor

from spt_core import distributed

Spec = tuple[torch.dtype, tuple[int, ...]]
"""The dtype and the shape of one row of a batch-first tensor."""

# Fixed order, the same in every process: a dtype travels as its index here.
_DTYPES = (
    torch.bool,
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.complex64,
    torch.complex128,
)
_MAX_DIMS = 6  # per row; a source with more is not described (no zero rows for it)
_WIDTH = 2 + _MAX_DIMS  # dtype index, number of row dimensions, the dimensions
_UNKNOWN = -1


def spec_of(value: Any) -> Spec | None:
    """The :data:`Spec` of a batch-first tensor or array, ``None`` for anything else.

    Example:
        >>> spec_of(torch.zeros(5, 3)), spec_of(np.arange(4)), spec_of(0.5)
        ((torch.float32, (3,)), (torch.int64, ()), None)
    """
    if isinstance(value, np.ndarray) and value.dtype.kind in "biufc":
        value = torch.from_numpy(value)
    if not isinstance(value, Tensor) or value.dim() == 0 or value.dim() - 1 > _MAX_DIMS:
        return None
    if value.dtype not in _DTYPES:
        return None
    return value.dtype, tuple(value.shape[1:])


def zero_rows(specs: Mapping[int, Spec], device: torch.device) -> dict[int, Tensor]:
    """An empty batch: zero rows of every described source, by source position.

    Example:
        >>> zero_rows({1: (torch.int64, (2,))}, torch.device("cpu"))[1].shape
        torch.Size([0, 2])
    """
    return {
        position: torch.empty((0, *shape), dtype=dtype, device=device)
        for position, (dtype, shape) in specs.items()
    }


def agree(
    local: Sequence[tuple[int, Mapping[int, Spec]]],
    num_sources: int,
    exchange: bool,
    device: torch.device | None = None,
) -> tuple[list[int], list[dict[int, Spec]]]:
    """Batches per dataloader summed over ranks, and the source specs any rank saw.

    Args:
        local: This rank's ``(batches, {source position: spec})`` for every dataloader.
        num_sources: How many sources the callback reads.
        exchange: Whether to ask the other ranks (one gather, the same on every rank);
            ``False`` when they are known to hold the same counts (training ranks step in
            lockstep).
        device: Where the collective runs (see :func:`collective_device`).

    Returns:
        ``(batches, specs)``, one entry per dataloader.

    Example:
        >>> agree([(3, {0: (torch.float32, (2,))})], num_sources=1, exchange=True)
        ([3], [{0: (torch.float32, (2,))}])
    """
    if not (local and exchange and distributed.is_distributed()):
        return [batches for batches, _ in local], [dict(specs) for _, specs in local]
    table = torch.tensor(
        [[batches, *_encode(specs, num_sources)] for batches, specs in local], device=device
    )
    every = distributed.gather_uneven(table[None]).cpu()  # one host sync
    batches = every[:, :, 0].sum(0).tolist()
    # Ranks that saw a source agree on its spec; the others say -1 everywhere.
    merged = every[:, :, 1:].amax(0).tolist()
    return batches, [_decode(row, num_sources) for row in merged]


def collective_device(pl_module: LightningModule) -> torch.device:
    """Where a collective runs: the CPU with gloo or without a process group, else the
    module's device (NCCL needs CUDA tensors)."""
    if distributed.is_distributed() and dist.get_backend() != "gloo":
        return pl_module.device
    return torch.device("cpu")


def _encode(specs: Mapping[int, Spec], num_sources: int) -> list[int]:
    codes = [_UNKNOWN] * (num_sources * _WIDTH)
    for position, (dtype, shape) in specs.items():
        start = position * _WIDTH
        codes[start : start + 2 + len(shape)] = [_DTYPES.index(dtype), len(shape), *shape]
    return codes


def _decode(codes: list[int], num_sources: int) -> dict[int, Spec]:
    specs = {}
    for position in range(num_sources):
        dtype, ndim, *dims = codes[position * _WIDTH : (position + 1) * _WIDTH]
        if dtype != _UNKNOWN:
            specs[position] = (_DTYPES[dtype], tuple(dims[:ndim]))
    return specs
