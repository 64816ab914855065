"""The constructor's checks and defaults of :class:`~spt_probe.OnlineProbe`."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule

from spt_core.checks import string_key

__all__ = ["DEFAULT_OPTIMIZER", "check_arguments"]

#: The seed's default optimizer: LARS with a clipped layer-wise rate and no momentum.
DEFAULT_OPTIMIZER = {
    "type": "LARS", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0, "eta": 0.02, "eps": 1e-8,
    "clip_lr": True, "exclude_bias_n_norm": True, "nesterov": False, "dampening": 0.0,
}  # fmt: skip


def check_arguments(
    module: Any, name: Any, input: Any, target: Any, probe: Any, loss_fn: Any
) -> None:
    """Raise a ``TypeError`` for a missing or mistyped argument and a ``ValueError`` for an
    empty key (as :class:`~spt_core.SPTCallback` does for ``name``).

    Example:
        >>> check_arguments(None, "linear", "", "label", object(), None)
        Traceback (most recent call last):
        ...
        ValueError: OnlineProbe[name=linear]: input must be a non-empty string key, got ''
    """
    owner = f"OnlineProbe[name={name}]" if isinstance(name, str) and name else "OnlineProbe"
    if module is not None and not isinstance(module, LightningModule):
        raise TypeError(
            f"{owner}: module must be the LightningModule being trained or None, got "
            f"{type(module).__name__} {module!r}; pass name=..., input=... as keywords"
        )
    for argument, value in (("name", name), ("input", input), ("target", target)):
        if value is None:
            raise TypeError(f"{owner}: missing required argument {argument!r}")
        string_key(value, f"{owner}: {argument}")
    if probe is None:
        raise TypeError(f"{owner}: missing required argument 'probe'")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(
            f"{owner}: loss_fn must be callable(logits, target) or None, got {loss_fn!r}"
        )
