"""Learning-rate schedulers from the short forms users write, with how to step them.

Forms: a name, a dict ``{"type": name_or_class, **kwargs}``, a partial / callable / class
called with the optimizer, or an already built scheduler. A dict may also wrap any other form
as ``{"scheduler": form}``; either dict carries the stepping options ``interval`` (``"step"``,
the default, or ``"epoch"``), ``monitor`` (the logged value a ``ReduceLROnPlateau`` follows,
required for it; its interval defaults to ``"epoch"``) and ``strict`` (``True``: a missing
monitored value is an error; ``False``: skip that step).

A name, a class or a dict that leaves out a required argument gets it from the run's length
(:mod:`spt_trainable.scheduler_defaults`: ``CosineAnnealingLR``'s ``T_max``, ``StepLR``'s
``step_size``...).

:func:`check_scheduler` validates a form without building anything (for constructors);
:func:`create_scheduler` builds.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from spt_trainable._forms import built, by_name, check_kwargs, registry, split_type
from spt_trainable.scheduler_defaults import defaulted, fill_defaults

__all__ = [
    "INTERVALS",
    "SchedulerConfig",
    "SchedulerSpec",
    "check_scheduler",
    "create_scheduler",
    "scheduler_class",
]

SchedulerSpec = str | Mapping[str, Any] | Callable[..., Any] | LRScheduler

INTERVALS = ("step", "epoch")
_SCHEDULER_OPTIONS = ("interval", "monitor", "strict")

_SCHEDULER_FORMS = (
    "a scheduler name (str, e.g. 'CosineAnnealingLR'), a dict {'type': name, **kwargs} "
    "or {'scheduler': form}, optionally with 'interval' ('step' or 'epoch'), 'monitor' and "
    "'strict', a functools.partial or callable taking the optimizer, a scheduler class, "
    "or a scheduler instance"
)


def _schedulers() -> dict[str, type]:
    found = registry(torch.optim.lr_scheduler, LRScheduler)
    found["ReduceLROnPlateau"] = ReduceLROnPlateau
    return found


def scheduler_class(name: str, argument: str = "scheduler") -> type:
    """The ``torch.optim.lr_scheduler`` class called ``name``: an exact match wins, otherwise
    a unique case-insensitive match.

    Raises:
        ValueError: If no scheduler has that name; the message lists the known ones.

    Example:
        >>> scheduler_class("CosineAnnealingLR").__name__
        'CosineAnnealingLR'
    """
    return by_name(name, _schedulers(), "learning-rate scheduler", argument)


@dataclass
class SchedulerConfig:
    """A built scheduler and how to step it, as :func:`create_scheduler` returns it.

    Args:
        scheduler: The scheduler.
        interval: ``"step"`` (after every optimizer step) or ``"epoch"``.
        monitor: The logged value passed to a ``ReduceLROnPlateau``'s ``step``.
        strict: Whether a missing monitored value is an error (else the step is skipped).

    Example:
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> config = SchedulerConfig(torch.optim.lr_scheduler.StepLR(opt, 5), interval="epoch")
        >>> config.interval, config.monitor, config.strict, config.needs_monitor
        ('epoch', None, True, False)
    """

    scheduler: Any
    interval: str = "step"
    monitor: str | None = None
    strict: bool = True

    @property
    def needs_monitor(self) -> bool:
        return isinstance(self.scheduler, ReduceLROnPlateau)


def _check_scheduler_kwargs(cls: type, kwargs: Mapping[str, Any], argument: str) -> None:
    """Like :func:`~spt_trainable._forms.check_kwargs`, the arguments that
    :data:`~spt_trainable.scheduler_defaults.SCHEDULER_DEFAULTS` fills counted as given; a
    scheduler whose first argument is not the optimizer (``ChainedScheduler``) is refused,
    since the factory calls it with the optimizer first."""
    try:
        first = next(iter(inspect.signature(cls).parameters), "optimizer")
    except (TypeError, ValueError):
        first = "optimizer"
    if first != "optimizer":
        raise TypeError(
            f"{argument}: {cls.__name__} needs [{first!r}] before the optimizer; build it "
            "yourself and pass the instance, or a callable taking the optimizer"
        )
    check_kwargs(cls, kwargs, tuple(defaulted(cls, kwargs)), argument)


def _options(spec: Any, argument: str) -> tuple[Any, dict[str, Any]]:
    """Split a dict form into (inner form, stepping options); other forms have no options."""
    if not isinstance(spec, Mapping):
        return spec, {}
    options = {k: spec[k] for k in _SCHEDULER_OPTIONS if k in spec}
    if "scheduler" in spec:
        extra = sorted(set(spec) - {"scheduler", *_SCHEDULER_OPTIONS})
        if extra:
            raise ValueError(
                f"{argument}: a {{'scheduler': ...}} dict takes only 'interval', 'monitor' and "
                f"'strict' beside it, got {extra}; use {{'type': ..., **kwargs}} for arguments"
            )
        inner = spec["scheduler"]
        if isinstance(inner, Mapping):
            raise TypeError(f"{argument}['scheduler'] must not be a dict, got {inner!r}")
    else:
        inner = {k: v for k, v in spec.items() if k not in _SCHEDULER_OPTIONS}
    interval = options.get("interval", "step")
    if interval not in INTERVALS:
        raise ValueError(f"{argument}['interval'] must be one of {INTERVALS}, got {interval!r}")
    monitor = options.get("monitor")
    if monitor is not None and not isinstance(monitor, str):
        raise TypeError(f"{argument}['monitor'] must be a str, got {monitor!r}")
    if not isinstance(options.get("strict", True), bool):
        raise TypeError(f"{argument}['strict'] must be a bool, got {options['strict']!r}")
    return inner, options


def _plateau_needs_monitor(cls: Any, options: Mapping[str, Any], argument: str) -> None:
    if isinstance(cls, type) and issubclass(cls, ReduceLROnPlateau) and not options.get("monitor"):
        raise ValueError(
            f"{argument}: ReduceLROnPlateau needs the logged value to follow: pass "
            f"{{'type': 'ReduceLROnPlateau', 'monitor': 'eval/...', ...}}"
        )


def check_scheduler(spec: SchedulerSpec, argument: str = "scheduler") -> None:
    """Raise if ``spec`` is not a valid scheduler form; build nothing.

    Raises:
        TypeError: For an unsupported form or constructor arguments that do not fit.
        ValueError: For an unknown name, a bad ``interval``, or ``ReduceLROnPlateau``
            without ``monitor``.

    Example:
        >>> check_scheduler({"type": "StepLR", "step_size": 10, "interval": "epoch"})
        >>> check_scheduler({"type": "CosineAnnealingLR", "interval": "hour"})
        Traceback (most recent call last):
        ...
        ValueError: scheduler['interval'] must be one of ('step', 'epoch'), got 'hour'
    """
    inner, options = _options(spec, argument)
    cls: Any = None
    if isinstance(inner, LRScheduler):
        cls = type(inner)
    elif isinstance(inner, str):
        cls = scheduler_class(inner, argument)
        _check_scheduler_kwargs(cls, {}, argument)
    elif isinstance(inner, Mapping):
        cls, kwargs = split_type(inner, argument, scheduler_class)
        if not issubclass(cls, LRScheduler):
            raise TypeError(f"{argument}['type'] must be a scheduler class, got {cls!r}")
        _check_scheduler_kwargs(cls, kwargs, argument)
    elif isinstance(inner, type) and issubclass(inner, LRScheduler):
        cls = inner
        _check_scheduler_kwargs(cls, {}, argument)
    elif not callable(inner):
        raise TypeError(
            f"{argument} must be {_SCHEDULER_FORMS}; got {type(spec).__name__} {spec!r}"
        )
    _plateau_needs_monitor(cls, options, argument)


def create_scheduler(
    optimizer: Optimizer,
    spec: SchedulerSpec,
    horizon: Callable[[str], int | None] | None = None,
    argument: str = "scheduler",
) -> SchedulerConfig:
    """Build a scheduler for ``optimizer`` from any accepted form, with its stepping options.

    Args:
        optimizer: The optimizer to schedule.
        spec: See the module docstring.
        horizon: ``horizon(interval)`` gives how many times the scheduler will be stepped
            (``None`` when unknown); it derives the required arguments a name, a class or a
            dict leaves out (:data:`~spt_trainable.scheduler_defaults.SCHEDULER_DEFAULTS`),
            for example ``StepLR``'s ``step_size`` or ``CosineAnnealingLR``'s ``T_max``. It is
            called only when such an argument is missing.
        argument: The argument's name, for error messages.

    Returns:
        A :class:`SchedulerConfig`.

    Raises:
        TypeError: For an ``optimizer`` that is not an ``Optimizer``, a ``horizon`` that is
            not callable (or returns neither an int nor ``None``), an unsupported form or a
            callable that returns no scheduler.
        ValueError: For an unknown name, a bad option, a scheduler bound to another
            optimizer, or a run length that is needed but unknown.

    Example:
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> config = create_scheduler(opt, "CosineAnnealingLR", horizon=lambda interval: 10)
        >>> config.scheduler.T_max, config.interval
        (10, 'step')
        >>> create_scheduler(opt, "StepLR", horizon=lambda interval: 30).scheduler.step_size
        10
        >>> config = create_scheduler(opt, {"type": "ReduceLROnPlateau", "monitor": "eval/acc"})
        >>> config.interval, config.monitor
        ('epoch', 'eval/acc')
    """
    check_scheduler(spec, argument)
    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            f"{argument}: optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    if horizon is not None and not callable(horizon):
        raise TypeError(f"{argument}: horizon must be callable(interval) or None, got {horizon!r}")
    inner, options = _options(spec, argument)
    interval = options.get("interval")
    if isinstance(inner, str) or (isinstance(inner, type) and issubclass(inner, LRScheduler)):
        inner = {"type": inner}
    if isinstance(inner, LRScheduler):
        scheduler = inner
    elif isinstance(inner, Mapping):
        cls, kwargs = split_type(inner, argument, scheduler_class)
        default = "epoch" if issubclass(cls, ReduceLROnPlateau) else "step"
        steps = (
            None if horizon is None else (lambda: _length(horizon, interval or default, argument))
        )
        scheduler = cls(optimizer, **fill_defaults(cls, kwargs, optimizer, steps, argument))
    else:
        given = "the optimizer"
        expected = "a learning-rate scheduler"
        scheduler = built(inner(optimizer), LRScheduler, inner, argument, given, expected)
    if scheduler.optimizer is not optimizer:
        raise ValueError(f"{argument}: the scheduler {scheduler!r} drives another optimizer")
    _plateau_needs_monitor(type(scheduler), options, argument)
    plateau = isinstance(scheduler, ReduceLROnPlateau)
    return SchedulerConfig(
        scheduler=scheduler,
        interval=interval or ("epoch" if plateau else "step"),
        monitor=options.get("monitor"),
        strict=options.get("strict", True),
    )


def _length(horizon: Callable[[str], int | None], interval: str, argument: str) -> int | None:
    value = horizon(interval)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise TypeError(
            f"{argument}: horizon({interval!r}) must return an int or None, got {value!r}"
        )
    return value
