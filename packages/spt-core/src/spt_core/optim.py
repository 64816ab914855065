"""Optimizers and learning-rate schedulers from the short forms users write.

Optimizer forms: a name (``"AdamW"``, ``"SGD"``, ``"LARS"``, any ``torch.optim`` class), a dict
``{"type": name_or_class, **kwargs}``, a ``functools.partial`` / callable / class called with
the parameters, or an already built ``Optimizer``.

Scheduler forms: a name, a dict ``{"type": name_or_class, **kwargs}``, a partial / callable /
class called with the optimizer, or an already built scheduler. A dict may also wrap any
other form as ``{"scheduler": form}``; either dict carries the stepping options ``interval``
(``"step"``, the default, or ``"epoch"``), ``monitor`` (the logged value a
``ReduceLROnPlateau`` follows, required for it; its interval defaults to ``"epoch"``) and
``strict`` (``True``: a missing monitored value is an error; ``False``: skip that step).

A scheduler given by name, by class or by a dict that leaves out a required argument gets a
default for it, derived from the run's length ``n`` (how many times the scheduler steps
during the fit: optimizer steps for ``interval="step"``, epochs for ``"epoch"``) and from the
optimizer's learning rates ``lr`` (:data:`SCHEDULER_DEFAULTS`):

==============================  =============================================================
scheduler                       filled in when left out
==============================  =============================================================
``CosineAnnealingLR``           ``T_max = n`` (one half-cosine over the run)
``CosineAnnealingWarmRestarts`` ``T_0 = ceil(n / 4)`` (four cycles)
``CyclicLR``                    ``base_lr = lr / 10``, ``max_lr = lr`` (per parameter group)
``ExponentialLR``               ``gamma = 0.01 ** (1 / n)`` (1% of ``lr`` at the end)
``MultiStepLR``                 ``milestones = [ceil(n / 2), ceil(3 n / 4)]``
``OneCycleLR``                  ``total_steps = n`` (unless ``epochs`` is given),
                                ``max_lr = lr`` (per parameter group)
``StepLR``                      ``step_size = ceil(n / 3)`` (with the default ``gamma=0.1``:
                                ``lr``, ``lr / 10``, ``lr / 100`` over three thirds)
==============================  =============================================================

Optional arguments keep torch's defaults (``ConstantLR``, ``LinearLR``, ``PolynomialLR``...).
``LambdaLR``, ``MultiplicativeLR``, ``SequentialLR`` and ``ChainedScheduler`` need arguments
that have no sensible default (functions, other schedulers): leaving them out is a
``TypeError`` that says which.

:func:`check_optimizer` / :func:`check_scheduler` validate a form without building anything
(for constructors); :func:`create_optimizer` / :func:`create_scheduler` build.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim import lr_scheduler as schedulers
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from spt_core.lars import LARS

__all__ = [
    "INTERVALS",
    "SCHEDULER_DEFAULTS",
    "OptimizerSpec",
    "SchedulerConfig",
    "SchedulerSpec",
    "check_optimizer",
    "check_scheduler",
    "create_optimizer",
    "create_scheduler",
    "optimizer_class",
    "scheduler_class",
]

OptimizerSpec = str | Mapping[str, Any] | Callable[..., Optimizer] | Optimizer
SchedulerSpec = str | Mapping[str, Any] | Callable[..., Any] | LRScheduler

INTERVALS = ("step", "epoch")
_SCHEDULER_OPTIONS = ("interval", "monitor", "strict")

_OPTIMIZER_FORMS = (
    "an optimizer name (str, e.g. 'AdamW', 'SGD', 'LARS'), a dict {'type': name, **kwargs}, "
    "a functools.partial or callable taking the parameters, an Optimizer class, "
    "or an Optimizer instance"
)
_SCHEDULER_FORMS = (
    "a scheduler name (str, e.g. 'CosineAnnealingLR'), a dict {'type': name, **kwargs} "
    "or {'scheduler': form}, optionally with 'interval' ('step' or 'epoch'), 'monitor' and "
    "'strict', a functools.partial or callable taking the optimizer, a scheduler class, "
    "or a scheduler instance"
)


def _lrs(optimizer: Optimizer, factor: float = 1.0) -> list[float]:
    return [factor * group["lr"] for group in optimizer.param_groups]


def _milestones(n: int) -> list[int]:
    return sorted(dict.fromkeys(max(1, math.ceil(n * f)) for f in (0.5, 0.75)))


Filler = Callable[[Callable[[], int], Optimizer], Any]

#: What a scheduler's required arguments default to when a form leaves them out: for each
#: scheduler class, ``{argument: filler(n, optimizer)}`` where ``n()`` returns how many times
#: the scheduler will step during the run (see the module docstring's table).
SCHEDULER_DEFAULTS: dict[type, dict[str, Filler]] = {
    schedulers.CosineAnnealingLR: {"T_max": lambda n, opt: n()},
    schedulers.CosineAnnealingWarmRestarts: {"T_0": lambda n, opt: max(1, math.ceil(n() / 4))},
    schedulers.CyclicLR: {
        "base_lr": lambda n, opt: _lrs(opt, 0.1),
        "max_lr": lambda n, opt: _lrs(opt),
    },
    schedulers.ExponentialLR: {"gamma": lambda n, opt: 0.01 ** (1 / n())},
    schedulers.MultiStepLR: {"milestones": lambda n, opt: _milestones(n())},
    schedulers.OneCycleLR: {
        "total_steps": lambda n, opt: n(),
        "max_lr": lambda n, opt: _lrs(opt),
    },
    schedulers.StepLR: {"step_size": lambda n, opt: max(1, math.ceil(n() / 3))},
}


def _check_scheduler_kwargs(cls: type, kwargs: Mapping[str, Any], argument: str) -> None:
    """Like :func:`_check_kwargs`, the arguments :data:`SCHEDULER_DEFAULTS` fills counted as
    given; a scheduler whose first argument is not the optimizer (``ChainedScheduler``) is
    refused, since the factory calls it with the optimizer first."""
    try:
        first = next(iter(inspect.signature(cls).parameters), "optimizer")
    except (TypeError, ValueError):
        first = "optimizer"
    if first != "optimizer":
        raise TypeError(
            f"{argument}: {cls.__name__} needs [{first!r}] before the optimizer; build it "
            "yourself and pass the instance, or a callable taking the optimizer"
        )
    _check_kwargs(cls, kwargs, tuple(_defaulted(cls, kwargs)), argument)


def _defaulted(cls: type, kwargs: Mapping[str, Any]) -> list[str]:
    """The arguments of ``cls`` that :data:`SCHEDULER_DEFAULTS` fills, given ``kwargs``."""
    fillers = SCHEDULER_DEFAULTS.get(cls, {})
    skip = {"total_steps"} if cls is schedulers.OneCycleLR and "epochs" in kwargs else set()
    return [key for key in fillers if key not in kwargs and key not in skip]


def _registry(module: Any, base: type) -> dict[str, type]:
    found = {
        name: obj
        for name, obj in vars(module).items()
        if isinstance(obj, type) and issubclass(obj, base) and not name.startswith("_")
    }
    found.pop(base.__name__, None)
    return found


def _optimizers() -> dict[str, type]:
    return {**_registry(torch.optim, Optimizer), "LARS": LARS}


def _schedulers() -> dict[str, type]:
    found = _registry(torch.optim.lr_scheduler, LRScheduler)
    found["ReduceLROnPlateau"] = ReduceLROnPlateau
    return found


def _by_name(name: str, known: dict[str, type], kind: str, argument: str) -> type:
    if name in known:
        return known[name]
    folded = [k for k in known if k.lower() == name.lower()]
    if len(folded) == 1:
        return known[folded[0]]
    raise ValueError(f"{argument}={name!r} is not a known {kind}; known: {sorted(known)}")


def optimizer_class(name: str, argument: str = "optimizer") -> type[Optimizer]:
    """The optimizer class called ``name``: spt's ``LARS`` or any ``torch.optim`` class.

    An exact match wins; otherwise a unique case-insensitive match.

    Raises:
        ValueError: If no optimizer has that name; the message lists the known ones.

    Example:
        >>> optimizer_class("adamw").__name__, optimizer_class("LARS").__name__
        ('AdamW', 'LARS')
    """
    return _by_name(name, _optimizers(), "optimizer", argument)


def scheduler_class(name: str, argument: str = "scheduler") -> type:
    """The ``torch.optim.lr_scheduler`` class called ``name`` (see :func:`optimizer_class`).

    Example:
        >>> scheduler_class("CosineAnnealingLR").__name__
        'CosineAnnealingLR'
    """
    return _by_name(name, _schedulers(), "learning-rate scheduler", argument)


def _check_kwargs(cls: type, kwargs: Mapping[str, Any], provided: tuple[str, ...], where: str):
    """Bind ``kwargs`` to ``cls``'s constructor, its first argument and ``provided`` aside."""
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        return
    params = list(signature.parameters.values())[1:]
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in params)
    names = {p.name for p in params}
    unknown = sorted(set(kwargs) - names)
    if unknown and not accepts_any:
        raise TypeError(
            f"{where}: {cls.__name__} takes no argument(s) {unknown}; "
            f"it takes {sorted(n for n in names if n not in ('args', 'kwargs'))}"
        )
    missing = [
        p.name
        for p in params
        if p.default is p.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.name not in kwargs
        and p.name not in provided
    ]
    if missing:
        raise TypeError(
            f"{where}: {cls.__name__} needs {missing}; pass them in a dict "
            f"{{'type': {cls.__name__!r}, ...}} or use a functools.partial"
        )


def _split_type(spec: Mapping[str, Any], argument: str, resolve: Callable[[str, str], type]):
    if "type" not in spec:
        raise ValueError(f"{argument} dict needs a 'type' key (a name or a class), got {spec!r}")
    kind = spec["type"]
    cls = resolve(kind, argument) if isinstance(kind, str) else kind
    if not isinstance(cls, type):
        raise TypeError(f"{argument}['type'] must be a name or a class, got {kind!r}")
    return cls, {k: v for k, v in spec.items() if k != "type"}


# ----------------------------------------------------------------------------- optimizers


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
        _check_kwargs(optimizer_class(spec, argument), {}, (), argument)
    elif isinstance(spec, Mapping):
        cls, kwargs = _split_type(spec, argument, optimizer_class)
        if not issubclass(cls, Optimizer):
            raise TypeError(f"{argument}['type'] must be an Optimizer class, got {cls!r}")
        _check_kwargs(cls, kwargs, (), argument)
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
        TypeError: If ``spec`` has no accepted form or a callable returns no ``Optimizer``.
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
    if isinstance(spec, str):
        optimizer = optimizer_class(spec, argument)(params)
    elif isinstance(spec, Mapping):
        cls, kwargs = _split_type(spec, argument, optimizer_class)
        optimizer = cls(params, **kwargs)
    else:
        optimizer = spec(params)
    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            f"{argument}: calling {spec!r} with the parameters returned "
            f"{type(optimizer).__name__}, not a torch.optim.Optimizer"
        )
    return optimizer


# ----------------------------------------------------------------------------- schedulers


@dataclass
class SchedulerConfig:
    """A built scheduler and how to step it.

    Attributes:
        scheduler: The scheduler.
        interval: ``"step"`` (after every optimizer step) or ``"epoch"``.
        monitor: The logged value passed to a ``ReduceLROnPlateau``'s ``step``.
        strict: Whether a missing monitored value is an error (else the step is skipped).
    """

    scheduler: Any
    interval: str = "step"
    monitor: str | None = None
    strict: bool = True

    @property
    def needs_monitor(self) -> bool:
        return isinstance(self.scheduler, ReduceLROnPlateau)


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
        cls, kwargs = _split_type(inner, argument, scheduler_class)
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


def _fill_defaults(
    cls: type,
    kwargs: dict[str, Any],
    optimizer: Optimizer,
    horizon: Callable[[], int | None] | None,
    argument: str,
) -> dict[str, Any]:
    """``kwargs`` with the required arguments it leaves out filled from the run's length."""
    missing = _defaulted(cls, kwargs)
    if not missing:
        return kwargs
    known: list[int] = []

    def length() -> int:
        if not known:
            value = horizon() if horizon is not None else None
            if value is None or not math.isfinite(value) or value < 1:
                raise ValueError(
                    f"{argument}: {cls.__name__} needs {missing} and the run's length is "
                    f"unknown (got {value!r}); pass {{'type': {cls.__name__!r}, "
                    f"{missing[0]!r}: ...}}"
                )
            known.append(int(value))
        return known[0]

    fillers = SCHEDULER_DEFAULTS[cls]
    return {**kwargs, **{key: fillers[key](length, optimizer) for key in missing}}


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
            dict leaves out (the table in the module docstring, :data:`SCHEDULER_DEFAULTS`),
            for example ``StepLR``'s ``step_size`` or ``CosineAnnealingLR``'s ``T_max``. It is
            called only when such an argument is missing.
        argument: The argument's name, for error messages.

    Returns:
        A :class:`SchedulerConfig`.

    Raises:
        TypeError: For an unsupported form or a callable that returns no scheduler.
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
    inner, options = _options(spec, argument)
    interval = options.get("interval")
    if isinstance(inner, str) or (isinstance(inner, type) and issubclass(inner, LRScheduler)):
        inner = {"type": inner}
    if isinstance(inner, LRScheduler):
        scheduler = inner
    elif isinstance(inner, Mapping):
        cls, kwargs = _split_type(inner, argument, scheduler_class)
        default = "epoch" if issubclass(cls, ReduceLROnPlateau) else "step"
        steps = (lambda: horizon(interval or default)) if horizon is not None else None
        scheduler = cls(optimizer, **_fill_defaults(cls, kwargs, optimizer, steps, argument))
    else:
        scheduler = inner(optimizer)
    if not isinstance(scheduler, LRScheduler):
        raise TypeError(
            f"{argument}: calling {inner!r} with the optimizer returned "
            f"{type(scheduler).__name__}, not a learning-rate scheduler"
        )
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
