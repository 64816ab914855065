"""A check, runnable on CPU, that code would not wait for an accelerator.

On a GPU an operation whose result the host must read (``.item()``, ``bool(tensor)``,
``nonzero``, boolean-mask indexing, ``unique``...) stalls the host until every queued kernel
has run. `forbid_host_sync` catches those operations by name at the dispatcher, so a CPU
test can show that a hot path is free of them. Reads that bypass the dispatcher on CPU
(``.tolist()``, ``.numpy()``) and copies to the host (``.cpu()``, which is a no-op for
a CPU tensor) are not seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNCING_OPS = frozenset(
    {
        "aten._local_scalar_dense",
        "aten.is_nonzero",
        "aten.equal",
        "aten.allclose",
        "aten._linalg_check_errors",
        "aten.histc",
        "aten.nonzero",
        "aten.masked_select",
        "aten.bincount",
        "aten.unique_consecutive",
        "aten.unique_dim",
        "aten._unique",
        "aten._unique2",
    }
)
"""Operations that make the host wait for the device (by overload packet name)."""

_MASK_INDEXING = frozenset(
    {"aten.index", "aten.index_put", "aten.index_put_", "aten._index_put_impl_"}
)


class HostSyncError(RuntimeError):
    """Raised inside `forbid_host_sync` by an operation that would wait for the device."""


class _SyncDetector(TorchDispatchMode):
    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = str(func.overloadpacket)
        syncs = name in SYNCING_OPS or (
            name == "aten.repeat_interleave"
            and func._overloadname in ("Tensor", "self_Tensor")
            and (kwargs or {}).get("output_size") is None
        )
        if not syncs and name in _MASK_INDEXING:
            indices = args[1] if len(args) > 1 else ()
            syncs = any(
                isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
                for i in indices or ()
            )
        if syncs:
            raise HostSyncError(f"{func} waits for the device")
        return func(*args, **(kwargs or {}))


@contextmanager
def forbid_host_sync() -> Iterator[None]:
    """Raise `HostSyncError` at the first operation in the block that would sync the host.

    Raises:
        HostSyncError: When such an operation runs, naming it.

    Example:
        >>> x = torch.tensor([1.0, -2.0])
        >>> with forbid_host_sync():
        ...     y = x.abs().topk(1).values
        >>> with forbid_host_sync():
        ...     bool(x.any())
        Traceback (most recent call last):
        ...
        spt_distance.testing.HostSyncError: aten._local_scalar_dense.default waits for the device
    """
    with _SyncDetector():
        yield
