"""The module half of :class:`~spt_trainable.TrainableCallback`: building the module, placing
it, keeping it identical across ranks and running it in the right mode."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor, nn

from spt_core import SPTCallback, callbacks_modules, distributed
from spt_trainable._devices import RandomStream, no_autocast
from spt_trainable.module_factory import ModuleSpec, build_module, check_module, input_width

__all__ = ["ModuleHost"]


class ModuleHost(SPTCallback):
    """A callback that owns an ``nn.Module`` next to the user's model (documented, with the
    training half, in :class:`~spt_trainable.TrainableCallback`).

    The module is built at the first ``setup`` (on a forked RNG), follows the LightningModule's
    device, starts from rank 0's parameters and buffers on every rank, and is exposed as
    ``pl_module.callbacks_modules[name]``.

    Args:
        name: Unique identifier.
        module: An accepted module form (see :func:`~spt_trainable.build_module`) or ``None``
            when a subclass overrides :meth:`build_module`.
        verbose: See :class:`~spt_core.SPTCallback`.

    Raises:
        TypeError: For a module of no accepted form.
    """

    #: How the module is called in the subclass's own signature, for error messages.
    module_argument = "module"

    def __init__(self, name: str, module: ModuleSpec | None, verbose: bool | None) -> None:
        super().__init__(name, verbose=verbose)
        if module is not None:
            check_module(module, f"{self.state_key}: {self.module_argument}")
        self._module_spec = module
        self._module: nn.Module | None = None
        self._device: torch.device | None = None
        self._dtype = torch.float32
        self._input_width: int | None = None
        self._random = RandomStream()

    def build_module(self, pl_module: LightningModule) -> nn.Module:
        """Build the trained module; called once, at the first ``setup``.

        The default resolves the ``module`` argument. Override it to build from other
        arguments (for example a projection sized from the data).
        """
        if self._module_spec is None:
            raise ValueError(
                f"{self.state_key}: no module to train; pass {self.module_argument}=... "
                "or override build_module"
            )
        return build_module(self._module_spec, pl_module, self.module_argument)

    @property
    def module(self) -> nn.Module:
        """The trained module (available from the first ``setup`` on)."""
        if self._module is None:
            raise RuntimeError(f"{self.state_key}: the module is built at setup; none yet")
        return self._module

    def prepare_input(self, x: Tensor) -> Tensor:
        """``x`` detached and cast to the module's device and floating dtype."""
        x = x.detach()
        dtype = self._dtype if x.is_floating_point() else x.dtype
        return x.to(device=self._device or x.device, dtype=dtype)

    def check_input_width(self, features: Tensor, key: str) -> None:
        """Raise a ``ValueError`` naming this callback, ``key`` and both sizes when the rows of
        ``features`` (their last dimension) do not fit the module's first layer.

        Only a first ``nn.Linear`` (alone or first in an ``nn.Sequential``) declares a width;
        other modules are not checked. Shapes only: no host sync.
        """
        width = self._input_width
        if width is not None and features.shape[-1] != width:
            raise ValueError(
                f"{self.state_key}: '{key}' has {features.shape[-1]} features per row, but the "
                f"{self.module_argument}'s first layer takes {width}"
            )

    @contextmanager
    def training_context(self) -> Iterator[nn.Module]:
        """Module in train mode, gradients on, autocast off, on the callback's own random
        stream (see the class notes); yields the module."""
        module = self.module
        module.train()
        with self._random.active(self._device), torch.enable_grad(), no_autocast(self._device):
            yield module

    @contextmanager
    def evaluation_context(self) -> Iterator[nn.Module]:
        """Module in eval mode, no gradients, autocast off; yields the module."""
        module = self.module
        module.eval()
        with torch.no_grad(), no_autocast(self._device):
            yield module

    def sync_buffers(self) -> None:
        """Make the module's buffers identical on every rank: floating-point buffers (such as
        BatchNorm running statistics, which each rank updates from its own rows) become their
        mean over the ranks, other buffers take rank 0's values.

        One collective per buffer dtype, in the module's buffer order; nothing without a
        process group or without buffers. Every rank must call it together (the base class does, at
        validation and test start and at the end of each training epoch).
        """
        if self._module is None or not distributed.is_distributed():
            return
        buffers = list(self._module.buffers())
        distributed.all_reduce_mean([b for b in buffers if b.is_floating_point()])
        distributed.broadcast_([b for b in buffers if not b.is_floating_point()])

    # ------------------------------------------------------------------ Lightning hooks

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self._module is None:
            with torch.random.fork_rng(devices=[]):
                module = self.build_module(pl_module)
            if not isinstance(module, nn.Module):
                raise TypeError(f"{self.state_key}: build_module returned {module!r}")
            self._module = module
            self._input_width = input_width(module)
            floats = [p for p in module.parameters() if p.is_floating_point()]
            self._dtype = floats[0].dtype if floats else torch.float32
        self._place(trainer.strategy.root_device)
        self._broadcast_module()
        callbacks_modules(pl_module)[self.name] = self._module

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._place(pl_module.device)

    def _eval_start(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super()._eval_start(trainer, pl_module, stage)
        self._place(pl_module.device)
        self.sync_buffers()

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._place(pl_module.device)

    # ------------------------------------------------------------------ internals

    def _place(self, device: torch.device) -> None:
        if self._module is None or device == self._device:
            return
        self._module.to(device)
        self._device = device

    def _broadcast_module(self) -> None:
        """Give every rank rank 0's parameters and buffers (one collective per dtype, in the
        module's order)."""
        distributed.broadcast_([*self.module.parameters(), *self.module.buffers()])
