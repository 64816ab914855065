"""Optimizers from the short forms users write.

Forms: a name (``"AdamW"``, ``"SGD"``, ``"LARS"``, any ``torch.optim`` class), a dict
``{"type": name_or_class, **kwargs}``, a ``functools.partial`` / callable / class called with
the parameters, or an already built ``Optimizer``.

:func:`check_optimizer` validates a form without building anything (for constructors);
:func:`create_optimizer` builds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch.optim import Optimizer

from spt_trainable._forms import built, by_name, check_kwargs, check_params, registry, split_type
from spt_trainable.lars import LARS

__all__ = ["OptimizerSpec", "check_optimizer", "create_optimizer", "optimizer_class"]

OptimizerSpec = str | Mapping[str, Any] | Callable[..., Optimizer] | Optimizer

_OPTIMIZER_FORMS = (
    "an optimizer name (str, e.g. 'AdamW', 'SGD', 'LARS'), a dict {'type': name, **kwargs}, "
    "a functools.partial or callable taking the parameters, an Optimizer class, "
    "or an Optimizer instance"
)


def _optimizers() -> dict[str, type]:
    return {**registry(torch.optim, Optimizer), "LARS": LARS}


def optimizer_class(name: str, argument: str = "optimizer") -> type[Optimizer]:
    """The optimizer class called ``name``: spt's ``LARS`` or any ``torch.optim`` class.

    An exact match wins; otherwise a unique case-insensitive match.

    Raises:
        ValueError: If no optimizer has that name; the message lists the known ones.

    Example:
        >>> optimizer_class("adamw").__name__, optimizer_class("LARS").__name__
        ('AdamW', 'LARS')
    """
    return by_name(name, _optimizers(), "optimizer", argument)


def check_optimizer(spec: OptimizerSpec, argument: str = "optimizer") -> None:
    """Raise if ``spec`` is not a valid optimizer form; build nothing.

    Names and dict arguments are checked against the optimizer's signature.

    Raises:
        TypeError: For an unsupported form, an unknown or missing constructor argument.
        ValueError: For an unknown name or a dict without ``'type'``.

    Example:
        >>> check_optimizer({"type": "SGD", "lr": 0.1})
        >>> check_optimizer({"type": "SGD", "rl": 0.1})
        Traceback (most recent call last):
        ...
        TypeError: optimizer: SGD takes no argument(s) ['rl']; ...
    """
    if isinstance(spec, Optimizer):
        return
    if isinstance(spec, str):
        check_kwargs(optimizer_class(spec, argument), {}, (), argument)
    elif isinstance(spec, Mapping):
        cls, kwargs = split_type(spec, argument, optimizer_class)
        if not issubclass(cls, Optimizer):
            raise TypeError(f"{argument}['type'] must be an Optimizer class, got {cls!r}")
        check_kwargs(cls, kwargs, (), argument)
    elif not callable(spec):
        raise TypeError(
            f"{argument} must be {_OPTIMIZER_FORMS}; got {type(spec).__name__} {spec!r}"
        )


def create_optimizer(
    params: Iterable[Any], spec: OptimizerSpec, argument: str = "optimizer"
) -> Optimizer:
    """Build an optimizer over ``params`` from any accepted form.

    Args:
        params: Parameters or parameter groups.
        spec: See the module docstring. An ``Optimizer`` instance is returned as is (the
            caller checks that it holds the right parameters).
        argument: The argument's name, for error messages.

    Returns:
        The optimizer.

    Raises:
        TypeError: If ``params`` is not an iterable of parameters or groups, ``spec`` has no
            accepted form or a callable returns no ``Optimizer``.
        ValueError: For an unknown name.

    Example:
        >>> w = [torch.nn.Parameter(torch.zeros(2))]
        >>> type(create_optimizer(w, "AdamW")).__name__
        'AdamW'
        >>> create_optimizer(w, {"type": "SGD", "lr": 0.5}).defaults["lr"]
        0.5
        >>> import functools
        >>> type(create_optimizer(w, functools.partial(LARS, lr=0.2))).__name__
        'LARS'
    """
    check_optimizer(spec, argument)
    if isinstance(spec, Optimizer):
        return spec
    check_params(params, f"{argument}: params")
    if isinstance(spec, str):
        spec = {"type": spec}
    if isinstance(spec, Mapping):
        cls, kwargs = split_type(spec, argument, optimizer_class)
        return cls(params, **kwargs)
    expected = "a torch.optim.Optimizer"
    return built(spec(params), Optimizer, spec, argument, "the parameters", expected)
