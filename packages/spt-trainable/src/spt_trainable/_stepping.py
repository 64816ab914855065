"""How a :class:`~spt_trainable.TrainableCallback` steps: its arguments, its window of
accumulated losses, the run's length for schedulers and the gradients before a step."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import Trainer
from torch import nn

from spt_core import distributed
from spt_core.checks import positive_int

__all__ = [
    "CLIP_ALGORITHMS",
    "check_stepping",
    "logger_writes_this_step",
    "prepare_gradients",
    "run_length",
    "window_size",
]

CLIP_ALGORITHMS = ("norm", "value")


def check_stepping(
    accumulate_grad_batches: Any,
    gradient_clip_val: Any,
    gradient_clip_algorithm: Any,
    owner: str = "TrainableCallback",
) -> None:
    """Raise naming ``owner`` (a ``state_key``), the argument and its value when one is not
    allowed.

    Raises:
        TypeError: If ``accumulate_grad_batches`` is not an int, or ``gradient_clip_val`` is
            neither a number nor ``None``.
        ValueError: If ``accumulate_grad_batches < 1``, ``gradient_clip_val`` is not a number
            ``> 0``, or ``gradient_clip_algorithm`` is not one of :data:`CLIP_ALGORITHMS`.

    Example:
        >>> check_stepping(2, None, "norm")
        >>> check_stepping(0, None, "norm", "TrainableCallback[name=head]")
        Traceback (most recent call last):
        ...
        ValueError: TrainableCallback[name=head]: accumulate_grad_batches must be an ... got 0
    """
    positive_int(accumulate_grad_batches, f"{owner}: accumulate_grad_batches")
    if gradient_clip_val is not None:
        message = f"{owner}: gradient_clip_val must be a number > 0 or None, got "
        if isinstance(gradient_clip_val, bool) or not isinstance(gradient_clip_val, (int, float)):
            raise TypeError(message + repr(gradient_clip_val))
        if not gradient_clip_val > 0:
            raise ValueError(message + repr(gradient_clip_val))
    if gradient_clip_algorithm not in CLIP_ALGORITHMS:
        raise ValueError(
            f"{owner}: gradient_clip_algorithm must be one of {CLIP_ALGORITHMS}, "
            f"got {gradient_clip_algorithm!r}"
        )


def window_size(accumulate: int, trainer: Trainer, batch_idx: int | None) -> int:
    """How many losses the window that starts at ``batch_idx`` will hold: ``accumulate``, or
    fewer for the epoch's last window when the epoch's length and ``batch_idx`` are known."""
    total = trainer.num_training_batches
    if batch_idx is None or not math.isfinite(total):
        return accumulate
    return max(1, min(accumulate, int(total) - batch_idx))


def run_length(trainer: Trainer, interval: str, accumulate: int) -> int | None:
    """How many times a scheduler with this ``interval`` will step during the fit, for a
    callback that steps once per ``accumulate`` training batches (``None`` when unknown)."""
    stepping = trainer.estimated_stepping_batches  # sets the train loader up if needed
    per_epoch = trainer.num_training_batches
    if not (math.isfinite(stepping) and math.isfinite(per_epoch)) or per_epoch < 1:
        return None
    batches = int(stepping) * trainer.accumulate_grad_batches
    if interval == "epoch":
        return math.ceil(batches / per_epoch)
    epochs, rest = divmod(batches, int(per_epoch))
    return epochs * math.ceil(per_epoch / accumulate) + math.ceil(rest / accumulate)


def prepare_gradients(
    params: Sequence[nn.Parameter],
    rescale: float,
    clip_val: float | None,
    clip_algorithm: str,
) -> None:
    """Ready the gradients for a step: scaled by ``rescale``, averaged over the ranks (a
    parameter without a gradient takes part with zeros) and clipped, in that order."""
    if rescale != 1.0:
        for p in params:
            if p.grad is not None:
                p.grad.mul_(rescale)
    if distributed.is_distributed():
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        distributed.all_reduce_mean([p.grad for p in params])
    if clip_val is not None:
        if clip_algorithm == "norm":
            nn.utils.clip_grad_norm_(params, clip_val)
        else:
            nn.utils.clip_grad_value_(params, clip_val)


def logger_writes_this_step(trainer: Trainer) -> bool:
    """Whether the Trainer's loggers receive the values logged during this training step.

    Lightning writes step values every ``log_every_n_steps`` optimizer steps (and when
    training stops); a ``log`` call costs about a millisecond, so a callback that logs its
    loss per batch skips the calls whose values no logger would see.

    Args:
        trainer: The running Trainer.

    Returns:
        ``True`` when the values logged during this step reach the loggers (Lightning's own
        rule, ``log_every_n_steps=0`` included).

    Raises:
        TypeError: If ``trainer`` is not a Lightning ``Trainer``.

    Example:
        >>> logger_writes_this_step(Trainer(logger=False, log_every_n_steps=1))
        True
    """
    if not isinstance(trainer, Trainer):
        raise TypeError(
            f"logger_writes_this_step: trainer must be a lightning Trainer, got "
            f"{type(trainer).__name__}"
        )
    connector = getattr(trainer, "_logger_connector", None)  # private, stable since 1.6
    return bool(getattr(connector, "should_update_logs", True))
