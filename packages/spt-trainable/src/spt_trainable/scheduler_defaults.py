"""The required scheduler arguments that the factory derives from the run when a form leaves
them out.

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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from torch.optim import Optimizer
from torch.optim import lr_scheduler as schedulers

__all__ = ["SCHEDULER_DEFAULTS", "defaulted", "fill_defaults"]


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


def defaulted(cls: type, kwargs: Mapping[str, Any]) -> list[str]:
    """The arguments of ``cls`` that :data:`SCHEDULER_DEFAULTS` fills, given ``kwargs``.

    Example:
        >>> defaulted(schedulers.StepLR, {}), defaulted(schedulers.StepLR, {"step_size": 2})
        (['step_size'], [])
    """
    fillers = SCHEDULER_DEFAULTS.get(cls, {})
    skip = {"total_steps"} if cls is schedulers.OneCycleLR and "epochs" in kwargs else set()
    return [key for key in fillers if key not in kwargs and key not in skip]


def fill_defaults(
    cls: type,
    kwargs: dict[str, Any],
    optimizer: Optimizer,
    horizon: Callable[[], int | None] | None,
    argument: str,
) -> dict[str, Any]:
    """``kwargs`` with the required arguments it leaves out filled from the run's length.

    Args:
        cls: The scheduler class.
        kwargs: The arguments the form gives.
        optimizer: The optimizer to schedule (its learning rates fill some arguments).
        horizon: Returns how many times the scheduler will step (``None`` when unknown);
            called at most once, and only when an argument that needs it is missing.
        argument: The argument's name, for error messages.

    Returns:
        A new dict; ``kwargs`` itself when nothing is missing.

    Raises:
        ValueError: If an argument needs the run's length and it is unknown.

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> fill_defaults(schedulers.StepLR, {}, opt, lambda: 30, "scheduler")
        {'step_size': 10}
    """
    missing = defaulted(cls, kwargs)
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
