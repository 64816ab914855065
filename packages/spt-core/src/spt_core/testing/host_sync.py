"""`forbid_host_sync`: a CPU check that code would not make the host wait for a device.

Operations whose result the host must read (``.item()``, ``bool(tensor)``, ``nonzero``,
boolean-mask indexing, ``unique``...) are caught by name at the dispatcher; the reads that
bypass the dispatcher on CPU (``.tolist()``, ``.numpy()``, and ``.cpu()``, a no-op on a CPU
tensor but a copy to the host from an accelerator) are caught as ``Tensor`` methods.
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

_INDEXING = frozenset({"aten.index", "aten.index_put", "aten.index_put_", "aten._index_put_impl_"})


class HostSyncError(RuntimeError):
    """Raised inside `forbid_host_sync` by an operation that would wait for the device.

    Example:
        >>> with forbid_host_sync():
        ...     try:
        ...         torch.ones(2).sum().item()
        ...     except HostSyncError as error:
        ...         print(error)
        aten._local_scalar_dense.default waits for the device
    """


def _is_mask(index: Any) -> bool:
    return isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8)


def _syncs(func: Any, args: tuple, kwargs: dict) -> bool:
    name = str(func.overloadpacket)
    if name in SYNCING_OPS:
        return True
    if name == "aten.repeat_interleave":
        return func._overloadname in ("Tensor", "self_Tensor") and "output_size" not in kwargs
    if name in _INDEXING and len(args) > 1:
        return any(_is_mask(index) for index in args[1] or ())
    return False


_HOST_READS = ("tolist", "numpy", "cpu")


def _refused(name: str) -> Any:
    def read(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        raise HostSyncError(f"Tensor.{name}() copies to the host and waits for the device")

    return read


class _SyncDetector(TorchDispatchMode):
    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = {k: v for k, v in (kwargs or {}).items() if v is not None}
        if _syncs(func, args, kwargs):
            raise HostSyncError(f"{func} waits for the device")
        return func(*args, **kwargs)


@contextmanager
def forbid_host_sync() -> Iterator[None]:
    """Raise `HostSyncError` at the first operation in the block that would sync the host.

    Returns:
        A context manager (``as`` binds ``None``); ``Tensor`` methods are restored on exit.

    Raises:
        HostSyncError: When such an operation runs, naming it.

    Example:
        >>> x = torch.tensor([1.0, -2.0])
        >>> with forbid_host_sync():
        ...     y = x.abs().topk(1).values
        >>> with forbid_host_sync():
        ...     x[x > 0]
        Traceback (most recent call last):
        ...
        spt_core.testing.host_sync.HostSyncError: aten.index.Tensor waits for the device
    """
    saved = {name: getattr(torch.Tensor, name) for name in _HOST_READS}
    for name in _HOST_READS:
        setattr(torch.Tensor, name, _refused(name))
    try:
        with _SyncDetector():
            yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)
