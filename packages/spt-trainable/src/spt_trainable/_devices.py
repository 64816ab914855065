"""Device matters of a :class:`~spt_trainable.TrainableCallback`: moving optimizer state,
switching autocast off, and a random stream of its own on any device type."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["RandomStream", "move_optimizer_state", "no_autocast"]


def move_optimizer_state(optimizer: Optimizer, device: torch.device) -> None:
    """Move the optimizer's per-parameter tensors (momenta...) to ``device``; 0-d tensors
    (step counters) stay where they are, as torch's optimizers keep them."""
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, Tensor) and value.device != device and value.ndim:
                state[key] = value.to(device)


def no_autocast(device: torch.device | None) -> Any:
    """A context with autocast off for ``device``'s type (CPU when ``None``)."""
    device_type = device.type if device is not None else "cpu"
    return torch.autocast(device_type=device_type, enabled=False)


class RandomStream:
    """A random stream of its own, kept apart from the global one.

    The stream starts as a copy of the global state at the first use and continues from use to
    use; the global stream is left as it was. :attr:`state` (``None`` before the first use)
    is what a checkpoint keeps, so a resumed dropout module draws the same masks.

    Example:
        >>> stream, before = RandomStream(), torch.get_rng_state()
        >>> with stream.active(torch.device("cpu")):
        ...     first = torch.rand(1)
        >>> torch.equal(torch.get_rng_state(), before)
        True
        >>> with stream.active(torch.device("cpu")):
        ...     second = torch.rand(1)
        >>> bool(first != second)
        True
    """

    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None

    @contextmanager
    def active(self, device: torch.device | None) -> Iterator[None]:
        """Draw from this stream (on the CPU and on ``device``) inside the context."""
        device = device if device is not None else torch.device("cpu")
        accelerated = device.type != "cpu"
        devices = [device] if accelerated else []
        with torch.random.fork_rng(devices=devices, device_type=device.type):
            rng = self.state
            if rng is not None:
                torch.set_rng_state(rng["cpu"])
                if accelerated and rng.get("device_type") == device.type:
                    _device_module(device).set_rng_state(rng["device"], device)
            yield
            self.state = {"cpu": torch.get_rng_state()}
            if accelerated:
                self.state.update(
                    device_type=device.type,
                    device=_device_module(device).get_rng_state(device),
                )


def _device_module(device: torch.device) -> Any:
    """``torch.cuda`` (or the module of another accelerator type) for RNG state calls."""
    return getattr(torch, device.type)
