"""Build the ``nn.Module`` a trainable callback owns from what the user passed."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

__all__ = ["ModuleSpec", "build_module", "check_module", "input_width", "is_hydra_config"]

ModuleSpec = nn.Module | Callable[..., nn.Module] | Mapping[str, Any]

_FORMS = (
    "an nn.Module, a callable returning one (called with no argument, or with the "
    "LightningModule when it takes a required argument), or a Hydra config with '_target_'"
)


def is_hydra_config(spec: Any) -> bool:
    """Whether ``spec`` is a Hydra-style config: a mapping with a ``_target_`` key.

    Example:
        >>> is_hydra_config({"_target_": "torch.nn.Linear", "in_features": 4, "out_features": 2})
        True
        >>> is_hydra_config({"in_features": 4})
        False
    """
    return isinstance(spec, Mapping) and "_target_" in spec


def check_module(spec: Any, argument: str = "module") -> None:
    """Raise a ``TypeError`` naming ``argument`` unless ``spec`` is an accepted module form.

    Example:
        >>> check_module(nn.Linear(2, 1))
        >>> check_module(3, argument="probe")
        Traceback (most recent call last):
        ...
        TypeError: probe must be an nn.Module, ...; got int 3
    """
    if isinstance(spec, nn.Module) or is_hydra_config(spec):
        return
    if isinstance(spec, Mapping) or not callable(spec):
        raise TypeError(f"{argument} must be {_FORMS}; got {type(spec).__name__} {spec!r}")


def input_width(module: nn.Module) -> int | None:
    """The number of features per row ``module`` takes, when its first layer says so.

    An ``nn.Linear`` takes ``in_features``; an ``nn.Sequential`` takes what its first layer
    takes. Anything else (a lazy layer, a convolution, a custom module) gives ``None``.

    Args:
        module: The module (a probe head, a projector...).

    Returns:
        Its first ``nn.Linear``'s ``in_features``, or ``None`` when the input width is not
        known before a first batch.

    Raises:
        TypeError: If ``module`` is not an ``nn.Module``.

    Example:
        >>> input_width(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)))
        8
        >>> input_width(nn.LazyLinear(2)) is None
        True
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"input_width: module must be an nn.Module, got {type(module).__name__}")
    while isinstance(module, nn.Sequential) and len(module):
        module = module[0]
    if isinstance(module, nn.Linear) and not isinstance(module, nn.modules.lazy.LazyModuleMixin):
        return module.in_features
    return None


def _wants_argument(factory: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        for p in parameters
    )


def _instantiate(config: Mapping[str, Any], argument: str) -> Any:
    try:
        from hydra.utils import instantiate
    except ImportError as error:
        raise ImportError(
            f"{argument} is a Hydra config ('_target_': {config['_target_']!r}) but hydra is "
            "not installed: `pip install hydra-core` (or spt-trainable[hydra]), or pass an "
            "nn.Module or a callable"
        ) from error
    return instantiate(config, _convert_="object")


def build_module(spec: ModuleSpec, context: Any = None, argument: str = "module") -> nn.Module:
    """Turn an accepted module form into an ``nn.Module``.

    Args:
        spec: An ``nn.Module`` (returned as is); a callable, called with ``context`` when it
            has a required positional parameter and with nothing otherwise; or a Hydra
            config (``_target_``), instantiated with ``hydra.utils.instantiate``.
        context: What a one-argument callable receives (the LightningModule).
        argument: The argument's name, for error messages.

    Returns:
        The module.

    Raises:
        TypeError: If ``spec`` has no accepted form or does not produce an ``nn.Module``.
        ImportError: For a Hydra config when hydra is not installed.

    Example:
        >>> build_module(lambda: nn.Linear(3, 2)).out_features
        2
        >>> build_module(lambda model: nn.Linear(model, 2), context=5).in_features
        5
    """
    check_module(spec, argument)
    if isinstance(spec, nn.Module):
        return spec
    if is_hydra_config(spec):
        module = _instantiate(spec, argument)
    else:
        module = spec(context) if _wants_argument(spec) else spec()
    if not isinstance(module, nn.Module):
        raise TypeError(f"{argument} produced {type(module).__name__}, not an nn.Module")
    return module
