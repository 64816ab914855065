"""The few collectives spt needs, usable whether or not a process group exists.

Without an initialised ``torch.distributed`` process group every function behaves as the
single-process case (world size 1, rank 0, identity gathers), so callbacks call them
unconditionally.

Every function issues its collectives in an order that depends only on its arguments (the
list order of the tensors, never a ``set``'s or a hash's order), so ranks that call it with
the same arguments stay in step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "all_reduce_max_",
    "all_reduce_mean",
    "any_rank",
    "broadcast_",
    "exchange",
    "gather_equal",
    "gather_uneven",
    "is_distributed",
    "rank",
    "world_size",
]

# gloo has no reduction or gather kernels for the 16-bit float types: they travel as fp32.
_GLOO_UPCAST = {torch.float16: torch.float32, torch.bfloat16: torch.float32}
# Not every backend has a bool type: flags travel as bytes everywhere.
_BYTE = {torch.bool: torch.uint8}


def is_distributed() -> bool:
    """Whether a process group with more than one process is active.

    Returns:
        ``True`` inside a process group of two or more processes, else ``False``.

    Example:
        >>> is_distributed()
        False
    """
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes in the default group, 1 without one.

    Returns:
        The default group's size, or 1 when no process group is initialised.

    Example:
        >>> world_size()
        1
    """
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """Rank of this process in the default group, 0 without one.

    Returns:
        This process's rank in the default group, or 0 when no process group is initialised.

    Example:
        >>> rank()
        0
    """
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _wire_dtype(dtype: torch.dtype) -> torch.dtype:
    dtype = _BYTE.get(dtype, dtype)
    return _GLOO_UPCAST.get(dtype, dtype) if dist.get_backend() == "gloo" else dtype


def gather_uneven(tensor: Tensor) -> Tensor:
    """Concatenate every rank's rows in rank order when ranks hold different row counts.

    Args:
        tensor: This rank's rows, shape ``(n_rank, *shape)``; ``n_rank`` may be 0. Every rank
            passes the same dtype and the same dimensions but the first.

    Returns:
        ``(sum(n_rank), *shape)`` on the input's device and dtype (one host sync); the input
        itself without a process group.

    Example:
        >>> gather_uneven(torch.arange(3)).tolist()
        [0, 1, 2]
    """
    if not is_distributed():
        return tensor
    size = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    counts = torch.cat(sizes).tolist()  # one host sync per gather, not per row
    longest = max(counts)
    wire = tensor.to(_wire_dtype(tensor.dtype))
    padded = wire.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = wire
    slots = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(slots, padded.contiguous())
    rows = [slot[:count] for slot, count in zip(slots, counts, strict=True)]
    return torch.cat(rows).to(tensor.dtype)


def gather_equal(tensor: Tensor) -> Tensor:
    """Concatenate every rank's equally shaped ``tensor`` in rank order (no host sync).

    Args:
        tensor: This rank's rows, with the same shape and dtype on every rank.

    Returns:
        ``(world_size * n, *shape)`` on the input's device and dtype; the input itself without
        a process group.

    Example:
        >>> gather_equal(torch.arange(3)).tolist()
        [0, 1, 2]
    """
    if not is_distributed():
        return tensor
    wire = tensor.to(_wire_dtype(tensor.dtype)).contiguous()
    slots = [torch.empty_like(wire) for _ in range(dist.get_world_size())]
    dist.all_gather(slots, wire)
    return torch.cat(slots).to(tensor.dtype)


def exchange(tensor: Tensor) -> Tensor:
    """Send block ``r`` of ``tensor``'s rows to rank ``r`` and receive every rank's block for
    this rank, in rank order (an all-to-all; the rows must divide evenly by the world size).

    Args:
        tensor: Rows for every rank, block ``r`` for rank ``r``; the same shape on every rank.

    Returns:
        A tensor shaped like ``tensor`` whose block ``r`` came from rank ``r``; the input itself
        without a process group.

    Example:
        >>> exchange(torch.arange(4)).tolist()
        [0, 1, 2, 3]
    """
    if not is_distributed():
        return tensor
    received = torch.empty_like(tensor)
    dist.all_to_all_single(received, tensor.contiguous())
    return received


def all_reduce_max_(tensor: Tensor) -> Tensor:
    """Replace ``tensor``, in place, by its elementwise maximum over all ranks.

    Args:
        tensor: A tensor with the same shape and dtype on every rank.

    Returns:
        ``tensor`` itself, now holding the maximum.

    Example:
        >>> all_reduce_max_(torch.tensor([1.0, 0.0])).tolist()
        [1.0, 0.0]
    """
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def _by_dtype(tensors: Sequence[Tensor]) -> list[list[Tensor]]:
    """``tensors`` grouped by dtype, the groups in order of first appearance.

    Every rank that passes the same list gets the same groups in the same order: the grouping
    never goes through a ``set`` (or a hash of a dtype), whose order differs between processes.
    """
    groups: dict[torch.dtype, list[Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.dtype, []).append(t)
    return list(groups.values())


def _flat_apply(tensors: Sequence[Tensor], collective) -> None:
    """One ``collective`` per dtype over the flattened tensors, then copy the results back.

    Dtypes are never mixed in one buffer, so no value is rounded through another type (an
    int64 counter through float32, say).
    """
    for group in _by_dtype(tensors):
        wire = _wire_dtype(group[0].dtype)
        flat = torch.cat([t.detach().reshape(-1).to(wire) for t in group])
        collective(flat)
        offset = 0
        for t in group:
            n = t.numel()
            t.detach().copy_(flat[offset : offset + n].view_as(t))
            offset += n


def all_reduce_mean(tensors: Sequence[Tensor]) -> None:
    """Replace each tensor, in place, by its mean over all ranks (one collective per dtype,
    in the order the dtypes first appear).

    Args:
        tensors: Floating-point tensors with the same shapes on every rank, in the same order
            (for example the gradients of a module's parameters).

    Raises:
        TypeError: If a tensor is not floating-point (its mean would not fit its dtype).

    Example:
        >>> t = torch.ones(2)
        >>> all_reduce_mean([t])
        >>> t.tolist()
        [1.0, 1.0]
    """
    tensors = list(tensors)
    for t in tensors:
        if not t.is_floating_point():
            raise TypeError(f"all_reduce_mean takes floating-point tensors, got {t.dtype}")
    if not is_distributed():
        return
    n = dist.get_world_size()

    def reduce(flat: Tensor) -> None:
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(n)

    _flat_apply(tensors, reduce)


def broadcast_(tensors: Sequence[Tensor], src: int = 0) -> None:
    """Overwrite each tensor, in place, with rank ``src``'s value (one collective per dtype,
    as in :func:`all_reduce_mean`; no value changes type on the way).

    Args:
        tensors: Tensors of any dtypes with the same shapes on every rank, in the same order
            (for example a module's parameters and buffers).
        src: The rank whose values win.

    Example:
        >>> t = torch.zeros(2)
        >>> broadcast_([t])
        >>> t.tolist()
        [0.0, 0.0]
    """
    if not is_distributed():
        return
    _flat_apply(list(tensors), lambda flat: dist.broadcast(flat, src=src))


def any_rank(flag: bool, device: torch.device | None = None) -> bool:
    """Whether ``flag`` is true on at least one rank; every rank calls it together (one
    collective on ``device``, one host sync).

    Args:
        flag: This rank's flag.
        device: Where the collective's tensor lives (CUDA under NCCL); ``None`` uses torch's
            default device.

    Returns:
        ``True`` if any rank passed a true ``flag``; ``bool(flag)`` without a process group.

    Example:
        >>> any_rank(True), any_rank(False)
        (True, False)
    """
    if not is_distributed():
        return bool(flag)
    value = torch.tensor([int(bool(flag))], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
