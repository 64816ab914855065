"""The clean evaluation of an :class:`~spt_probe.OnlineProbe`: a periodic linear evaluation of
a fresh probe trained on the clean, eval-mode features of a labelled loader."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor, nn

from spt_core import SPTCallback, StageMetrics, callbacks_metrics, distributed
from spt_core.checks import check_label_range, finite_rows, positive_int
from spt_embed import EvaluationSchedule, embed_loader, gather_in_loader_order
from spt_probe._targets import PROBE_OUTPUT
from spt_probe.functional import prepare_features, probe_predict
from spt_probe.linear_eval import DEFAULT_FIT_OPTIMIZER, fit_probe, fresh_probe, not_reset
from spt_trainable.optimizers import OptimizerSpec, check_optimizer

__all__ = ["CleanEvaluation", "NoCleanEvaluation", "check_clean_arguments", "clean_evaluation"]


def check_clean_arguments(
    owner: str,
    *,
    every_n_epochs: Any,
    epochs: Any,
    batch_size: Any,
    optimizer: Any,
    seed: Any,
    clean_embed: Any,
) -> None:
    """Raise naming ``owner`` (a ``state_key``), the ``clean_*`` argument and its value when
    one is not allowed; an :class:`~spt_probe.OnlineProbe` checks them with or without a
    ``clean_loader``.

    Raises:
        TypeError: For a count or seed that is not an int, a ``clean_embed`` that is not
            callable, or an optimizer of no accepted form (an ``Optimizer`` instance included).
        ValueError: For a count below 1, a negative seed or an unknown optimizer name.

    Example:
        >>> check_clean_arguments("OnlineProbe[name=p]", every_n_epochs=0, epochs=10,
        ...                       batch_size=256, optimizer=None, seed=0, clean_embed=None)
        Traceback (most recent call last):
        ...
        ValueError: OnlineProbe[name=p]: clean_every_n_epochs must be an integer >= 1, got 0
    """
    for argument, value, least in (
        ("clean_every_n_epochs", every_n_epochs, 1),
        ("clean_epochs", epochs, 1),
        ("clean_batch_size", batch_size, 1),
        ("clean_seed", seed, 0),
    ):
        positive_int(value, f"{owner}: {argument}", least)
    if clean_embed is not None and not callable(clean_embed):
        raise TypeError(
            f"{owner}: clean_embed must be callable(pl_module, batch), got {clean_embed!r}"
        )
    if isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"{owner}: clean_optimizer cannot be an Optimizer instance (each clean "
            "evaluation trains a new probe); pass a name, a dict or a partial"
        )
    if optimizer is not None:
        check_optimizer(optimizer, f"{owner}: clean_optimizer")


class CleanEvaluation:
    """Train a fresh probe on a labelled loader's clean features when due; score with it.

    Due on the schedule of :class:`spt_embed.EvaluationSchedule`: the first validation of a
    fit (not the sanity check), then the first validation ``every_n_epochs`` training epochs
    after the last clean evaluation (epochs ``0, n, 2n, ...`` when every epoch validates), and
    every ``validate``/``test`` run outside ``fit``; each fit starts over. The probe is trained
    at the start of a due evaluation and scores that evaluation only: between due epochs
    nothing is trained, scored or logged under the clean names. Under DDP each rank embeds its
    share of the loader, every rank gathers all rows in the loader's order and trains the same
    probe from the same seed; rank 0's weights are then broadcast. The checkpointed state is the
    schedule alone (``{"schedule": {"last_epoch": e}}``): the probe is trained again when next
    due, so a resumed run logs what the uninterrupted one would have. :attr:`probe` keeps the
    last clean probe for inspection.

    Args:
        owner: The online probe (keys, loss, architecture, messages).
        loader: Labelled batches.
        every_n_epochs: Training epochs between two clean evaluations.
        epochs: Passes of :func:`~spt_probe.fit_probe` over the cached features.
        batch_size: Rows per step of :func:`~spt_probe.fit_probe`.
        optimizer: Its optimizer form (``None``: AdamW, lr 1e-3).
        seed: Seeds the fresh probe and its training (the same on every rank).
        clean_embed: ``clean_embed(pl_module, batch) -> features`` or ``None`` (see
            :func:`spt_embed.embed_loader`).
        metrics: ``{name: metric}`` prototypes, logged as ``eval/{owner}_clean_{name}``.

    Raises:
        ValueError: For a count below its minimum, or no ``metrics``.
        TypeError: For a loader that is not iterable, a ``clean_embed`` that is not callable,
            or an optimizer of no accepted form (an ``Optimizer`` instance included).
    """

    def __init__(
        self,
        owner: SPTCallback,
        loader: Iterable[Any],
        *,
        every_n_epochs: int,
        epochs: int,
        batch_size: int,
        optimizer: OptimizerSpec | None,
        seed: int,
        clean_embed: Callable[[LightningModule, Any], Tensor] | None,
        metrics: Mapping[str, Any],
    ) -> None:
        key = owner.state_key
        check_clean_arguments(
            key, every_n_epochs=every_n_epochs, epochs=epochs, batch_size=batch_size,
            optimizer=optimizer, seed=seed, clean_embed=clean_embed,
        )  # fmt: skip
        self.schedule = EvaluationSchedule(every_n_epochs, f"{key}: clean_every_n_epochs")
        if not isinstance(loader, Iterable):
            raise TypeError(f"{key}: clean_loader must be an iterable of batches, got {loader!r}")
        if not metrics:
            raise ValueError(f"{key}: clean_loader needs metrics=..., the values it logs")
        self.owner, self.loader, self.clean_embed = owner, loader, clean_embed
        self.epochs, self.batch_size = epochs, batch_size
        self.optimizer = DEFAULT_FIT_OPTIMIZER if optimizer is None else optimizer
        self.seed = seed
        self.stages = StageMetrics({f"clean_{name}": m for name, m in metrics.items()})
        self.probe: nn.Module | None = None
        """The probe of the last clean evaluation (``None`` before one, or after an empty
        loader); it scores nothing outside that evaluation."""
        self._scoring = False  # this evaluation is due and has a probe

    def setup(self, stage: str) -> None:
        """At ``setup``: a fit starts the schedule over (a checkpoint then restores it)."""
        if stage == "fit":
            self.schedule.reset()

    def prepare(
        self, trainer: Trainer, pl_module: LightningModule, stage: str, loaders: int
    ) -> None:
        """At an evaluation epoch's start: when due, train the probe and create the metric
        copies. Every rank calls it together."""
        self._scoring = False
        if not self.schedule.due(trainer):
            return
        self._train(trainer, pl_module)
        self.schedule.mark(trainer)
        if self.probe is None:
            return
        self._scoring = True
        for idx in range(loaders):
            self.stages.get(stage, idx, pl_module.device)
        live = {f"{key}/clean": copies for key, copies in self.stages.all_live().items()}
        callbacks_metrics(pl_module).setdefault(self.owner.name, {}).update(live)

    def update(self, stage: str, idx: int, features: Tensor, target: Tensor) -> None:
        """Score one batch of a due evaluation with its clean probe (no host sync)."""
        if self._scoring:
            preds = probe_predict(self.probe, features.reshape(len(features), -1))
            self.stages.update_labelled(stage, idx, preds, target)

    def compute(
        self, stage: str, loaders: int, device: torch.device, skip: set[int]
    ) -> dict[str, Tensor]:
        """``{eval/{name}_clean_{metric}: value}`` of a due evaluation, then reset (one
        collective; every rank agrees whether it is due); ``{}`` otherwise."""
        if not self._scoring:
            return {}
        self._scoring = False
        values = self.stages.compute_and_reset(stage, loaders, device, skip=skip)
        return {f"eval/{self.owner.name}_{key}": value for key, value in values.items()}

    def state_dict(self) -> dict[str, Any]:
        """``{"schedule": {"last_epoch": e}}``; the probe is trained again when next due."""
        return {"schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.schedule.load_state_dict(state.get("schedule", {}))

    # ------------------------------------------------------------------ internals

    def _train(self, trainer: Trainer, pl_module: LightningModule) -> None:
        owner = self.owner
        features, labels, index = embed_loader(
            pl_module, self.loader, input=owner.input, target=owner.target,
            embed=self.clean_embed, owner=owner.state_key, with_index=True,
        )  # fmt: skip
        # Lightning evaluates under inference mode, whose tensors cannot be trained on.
        with torch.inference_mode(False):
            features, labels = _gathered(features.clone(), labels.clone(), index, owner.module)
            if not len(features):
                message = f"the clean loader gave no row: no eval/{owner.name}_clean_* this epoch"
                owner.info_once(trainer, "clean-empty", message)
                self.probe = None
                return
            owner.check_input_width(features, owner.input)
            probe = fresh_probe(owner.module, self.seed)
            self._check(trainer, probe, features, labels)
            fit_probe(
                probe, features, labels, epochs=self.epochs, batch_size=self.batch_size,
                optimizer=self.optimizer, loss_fn=owner.loss_fn, seed=self.seed,
            )  # fmt: skip
        # Float rounding may differ between ranks' kernels: every rank keeps rank 0's probe.
        distributed.broadcast_([*probe.parameters(), *probe.buffers()])
        self.probe = probe.eval()

    def _check(self, trainer: Trainer, probe: nn.Module, features: Tensor, labels: Tensor) -> None:
        """Once per training (a host sync or two): labels fit the probe, rows are finite."""
        owner, classes = self.owner, probe_predict(probe, features[:1]).shape[-1]
        if labels.numel():
            name = f"{owner.state_key}: the clean loader's '{owner.target}'"
            check_label_range(int(labels.max()), classes, name, classes_from=PROBE_OUTPUT)
        bad = int((~finite_rows(features)).sum())
        if bad:
            message = f"{bad} clean rows of '{owner.input}' had non-finite values: the clean "
            owner.warn_once(trainer, "clean-non-finite", message + "probe is trained without them")
        kept = not_reset(probe)
        if kept:
            message = f"the clean probe's {kept} have no reset_parameters: they start from the "
            owner.warn_once(trainer, "clean-not-reset", message + "online probe's values")


class NoCleanEvaluation:
    """What an :class:`~spt_probe.OnlineProbe` without ``clean_loader`` holds in place of a
    :class:`CleanEvaluation`: every step does nothing, and it is falsy."""

    probe = None

    def __bool__(self) -> bool:
        return False

    def setup(self, stage: str) -> None:
        """Nothing to start over."""

    def prepare(self, trainer: Trainer, pl_module: LightningModule, stage: str, loaders: int):
        """Nothing to train."""

    def update(self, stage: str, idx: int, features: Tensor, target: Tensor) -> None:
        """Nothing to score."""

    def compute(self, stage: str, loaders: int, device: torch.device, skip: set[int]) -> dict:
        """Nothing to log: ``{}``."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing to restore (a clean state from another configuration is ignored)."""


def _gathered(
    features: Tensor, labels: Tensor, index: Tensor, probe: nn.Module
) -> tuple[Tensor, Tensor]:
    """Every rank's rows on every rank, in the loader's order (so the seeded shuffle of
    :func:`~spt_probe.fit_probe` sees what one process sees); features in the probe's dtype."""
    features, labels = gather_in_loader_order(features, labels, index)
    return prepare_features(features, probe), labels


def clean_evaluation(
    owner: SPTCallback, loader: Iterable[Any] | None, **options: Any
) -> CleanEvaluation | NoCleanEvaluation:
    """The clean evaluation of ``owner``: a :class:`CleanEvaluation` of ``loader`` with
    ``options`` (its keyword arguments), or a :class:`NoCleanEvaluation` when ``loader`` is
    ``None``; the ``clean_*`` options are checked either way (:func:`check_clean_arguments`,
    which :class:`CleanEvaluation` calls itself).

    Raises:
        TypeError: See :func:`check_clean_arguments` and :class:`CleanEvaluation`.
        ValueError: See :func:`check_clean_arguments` and :class:`CleanEvaluation`.
    """
    if loader is not None:
        return CleanEvaluation(owner, loader, **options)
    checked = {key: value for key, value in options.items() if key != "metrics"}
    check_clean_arguments(owner.state_key, **checked)
    return NoCleanEvaluation()
