"""OnlineProbe: a probe trained on detached features while the backbone trains."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from torch import Tensor
from torchmetrics import Metric

from spt_core import named_metrics
from spt_core.checks import check_metrics
from spt_probe._arguments import DEFAULT_OPTIMIZER, check_arguments
from spt_probe._checkpoint import ProbeCheckpoint
from spt_probe._clean import clean_evaluation
from spt_probe._epoch_loss import EpochLoss
from spt_probe._inputs import ProbeInputs
from spt_probe._probe_metrics import WHERE, ProbeMetrics, loaders_of
from spt_probe.functional import masked_cross_entropy, probe_predict, probe_step
from spt_trainable import TrainableCallback, logger_writes_this_step
from spt_trainable.module_factory import ModuleSpec
from spt_trainable.optimizers import OptimizerSpec
from spt_trainable.schedulers import SchedulerSpec

__all__ = ["OnlineProbe"]


class OnlineProbe(ProbeInputs, ProbeCheckpoint, TrainableCallback):
    """Train a probe (linear or MLP) on frozen features during training and evaluate it.

    On every training batch the probe reads ``input`` (step outputs first, then the batch),
    detaches it, casts it to the probe's dtype and takes one step of its own optimizer
    against ``target``; the backbone's gradients and weights are never touched. On
    validation and test batches it predicts without training. Predictions are written to
    the batch dict as ``{name}_preds``. Each training batch runs :func:`~spt_probe.probe_step`
    and each evaluation batch :func:`~spt_probe.probe_predict`, which a probe trained by hand
    can call too.

    What loggers receive:

    - ``train/{name}_loss``: the epoch's mean training loss (over labelled rows, weighted by
      their number; averaged over ranks), at the end of each training epoch;
    - ``train/{name}_loss_step``: the batch's loss, on the steps the loggers write (every
      ``log_every_n_steps``);
    - ``train/{name}_{metric}``: at the end of each training epoch;
    - ``eval/{name}_{metric}``: at the end of each validation or test epoch (with
      ``/dataloader_idx_{i}`` when there are several loaders);
    - ``eval/{name}_clean_{metric}``: the same, from the clean probe (with ``clean_loader``).

    **Clean evaluation** (``clean_loader``, see the README): at the first validation epoch of
    a fit, every ``clean_every_n_epochs`` after (:class:`spt_embed.EvaluationSchedule`) and at
    every ``validate``/``test`` outside ``fit``, a fresh probe is trained on ``clean_loader``
    embedded in eval mode (:func:`spt_embed.embed_loader`, :func:`~spt_probe.fit_probe`) and
    scores that evaluation's batches only; other epochs log no clean value.

    Train, validation (per loader) and test own separate metric copies, exposed at
    ``pl_module.callbacks_metrics[name]`` (``"val/0"``; the clean copies ``"val/0/clean"``);
    the probe is at ``pl_module.callbacks_modules[name]``.

    **Targets.** With the default loss, ``target`` holds one integer class index per row;
    negative labels mark unlabelled rows, which stay out of the loss (a batch without a
    labelled row steps on a zero gradient) and out of every metric. A ``loss_fn`` with an
    integer ``ignore_index`` (``nn.CrossEntropyLoss``) receives them as its ``ignore_index``;
    any other ``loss_fn`` receives every row as it is (see :func:`~spt_probe.probe_loss`).
    Integer targets with one value per row are class labels for any loss: metrics never see
    their unlabelled rows, and a label without an output of the probe (``>= C`` for ``C``
    logits) raises a ``ValueError``. Other targets (regression, multi-label, reconstruction:
    whatever ``loss_fn`` takes) reach the loss and the metrics unchanged. Floating-point or
    non-tensor targets with the default loss raise at the first batch that carries them.

    **Bad data** is reported, never averaged into a logged value: a feature size that does
    not fit the probe's first ``nn.Linear`` raises a ``ValueError`` at once; labels and
    non-finite features are counted on the device and checked at the end of each epoch,
    before anything is logged (no host sync per batch). Rows with a non-finite feature are
    zeroed before training (and unlabelled where unlabelled rows are left out), and a stage
    or loader that had any logs no metric that epoch, with one warning.

    **Untrained probe.** ``trainer.validate`` or ``test`` before the probe took any optimizer
    step still logs ``eval/{name}_*`` (the value of an untrained probe is a baseline some
    want), and says once per epoch that the probe is untrained.

    **DDP.** The probe starts from rank 0's weights and averages its gradients across ranks
    before each step. BatchNorm running statistics (and any floating-point buffer) are
    averaged across ranks before each validation or test run and at the end of each training
    epoch, so every rank evaluates the same probe; any checkpoint resumes every rank exactly
    (see :meth:`gather_checkpoint_state`).

    Args:
        module: The LightningModule being trained, or ``None``; when given, the probe
            checks at setup that it is the module it runs on.
        name: Unique identifier (logged names, storage keys, checkpoint slot).
        input: Key of the features in the step outputs or the batch dict.
        target: Key of the targets in the step outputs or the batch dict.
        probe: An ``nn.Module``, a callable returning one (no argument, or the
            LightningModule), or a Hydra config (``_target_``).
        loss_fn: ``loss_fn(logits, target)`` returning a scalar; ``None`` is cross-entropy
            over the labelled rows (:func:`~spt_probe.masked_cross_entropy`).
        optimizer: Any form of :func:`spt_trainable.create_optimizer`; ``None`` is
            ``LARS(lr=0.1, momentum=0, weight_decay=0, eta=0.02, eps=1e-8, clip_lr=True,
            exclude_bias_n_norm=True, nesterov=False, dampening=0)`` (the seed's default).
        scheduler: Any form of :func:`spt_trainable.create_scheduler` (a name alone gets
            its required arguments from the run's length, see
            :mod:`spt_trainable.scheduler_defaults`); ``None`` keeps the learning rate constant.
        accumulate_grad_batches: Training batches per probe step.
        gradient_clip_val: Clip threshold, ``None`` for no clipping.
        gradient_clip_algorithm: ``"norm"`` or ``"value"``.
        metrics: A metric, list/tuple of metrics (named after their class, e.g. ``accuracy``
            and ``accuracy_top5``), or ``{name: metric}``; each is updated with
            ``(logits, target)``. ``None`` logs the loss only. The probe adds no host sync
            per batch, but torchmetrics' classification metrics do on CUDA (argument
            validation unless ``validate_args=False``; the mask of the ``ignore_index=-1``
            their copies get, see :meth:`spt_core.StageMetrics.update_labelled`;
            ``torch.bincount`` unless deterministic algorithms are on).
        clean_loader: Labelled batches for the clean evaluation (needs ``metrics``), or ``None``.
        clean_every_n_epochs: Training epochs between two clean trainings.
        clean_epochs: Passes over the clean features per training.
        clean_batch_size: Rows per step of the clean probe.
        clean_optimizer: Its optimizer form (not an instance); ``None`` is AdamW, lr 1e-3.
        clean_seed: Seed of the clean probe's initialisation and row order.
        clean_embed: ``clean_embed(pl_module, batch) -> features`` for the clean loader;
            ``None`` reads ``input`` from ``validation_step``.
        verbose: See :class:`~spt_core.SPTCallback` (keyword-only, like every argument
            beyond the seed's).

    Raises:
        TypeError: For a missing ``name``/``input``/``target``/``probe``, or an argument of
            the wrong type (a non-string key, a non-int count or seed...).
        ValueError: For an empty key or name, a count below its minimum or another option
            out of range. Messages name the ``state_key`` and the argument.

    Example:
        >>> import torch
        >>> probe = OnlineProbe(name="linear", input="embedding", target="label",
        ...                     probe=torch.nn.Linear(8, 3))
        >>> probe.state_key
        'OnlineProbe[name=linear]'
    """

    module_argument = "probe"

    def __init__(
        self,
        module: LightningModule | None = None,
        name: str | None = None,
        input: str | None = None,
        target: str | None = None,
        probe: ModuleSpec | None = None,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        optimizer: OptimizerSpec | None = None,
        scheduler: SchedulerSpec | None = None,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
        metrics: Metric | Mapping[str, Metric] | Sequence[Metric] | None = None,
        *,
        clean_loader: Iterable[Any] | None = None,
        clean_every_n_epochs: int = 1,
        clean_epochs: int = 10,
        clean_batch_size: int = 256,
        clean_optimizer: OptimizerSpec | None = None,
        clean_seed: int = 0,
        clean_embed: Callable[[LightningModule, Any], Tensor] | None = None,
        verbose: bool | None = None,
    ) -> None:
        check_arguments(module, name, input, target, probe, loss_fn)
        super().__init__(
            name, module=probe, optimizer=optimizer, scheduler=scheduler,
            accumulate_grad_batches=accumulate_grad_batches, gradient_clip_val=gradient_clip_val,
            gradient_clip_algorithm=gradient_clip_algorithm, verbose=verbose,
        )  # fmt: skip
        named = named_metrics(metrics, owner=self.state_key, argument="metrics")
        check_metrics(named, self.state_key)
        self.input, self.target = input, target
        self.loss_fn = loss_fn if loss_fn is not None else masked_cross_entropy
        self._lightning_module = module
        self._metrics = ProbeMetrics(named, self, input, target)
        self._epoch_loss = EpochLoss()
        self._classes: int | None = None  # the probe's output width, seen at its first call
        self._clean = clean_evaluation(
            self, clean_loader, every_n_epochs=clean_every_n_epochs, epochs=clean_epochs,
            batch_size=clean_batch_size, optimizer=clean_optimizer, seed=clean_seed,
            clean_embed=clean_embed, metrics=named,
        )  # fmt: skip

    def default_optimizer(self) -> OptimizerSpec:
        """The seed's default, every argument spelled out: ``LARS(lr=0.1, momentum=0,
        weight_decay=0, eta=0.02, eps=1e-8, clip_lr=True, exclude_bias_n_norm=True,
        nesterov=False, dampening=0)``, a clipped layer-wise rate and no momentum."""
        return dict(DEFAULT_OPTIMIZER)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._lightning_module is not None and self._lightning_module is not pl_module:
            raise ValueError(
                f"{self.state_key}: module= was given a different LightningModule than the "
                "one being run; pass the trained module or leave module=None"
            )
        super().setup(trainer, pl_module, stage)
        self._clean.setup(stage)  # a fit starts over, before a checkpoint restores it

    # ------------------------------------------------------------------ training

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        # Here, not at epoch start: a fit resumed mid-epoch starts no epoch.
        self._metrics.expose(pl_module, "train", 1)
        if self._metrics:
            self.info_if_no_validation(trainer, f"eval/{self.name}_*")

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        features = self._features(outputs, batch)
        target = self._target(outputs, batch, features, "train")
        finite = self._metrics.check("train", 0, features, target)
        with self.training_context() as probe:
            step = probe_step(probe, features, target, self.loss_fn, finite=finite)
        self._classes = step.logits.shape[-1]
        self.backward_and_step(step.loss, trainer, batch_idx)
        loss, preds = step.loss.detach(), step.logits.detach()
        self._publish(batch, preds)
        self._epoch_loss.add(loss, step.rows, features.shape[0])
        if logger_writes_this_step(trainer):
            pl_module.log(
                f"train/{self.name}_loss_step", loss, on_step=True, on_epoch=False,
                batch_size=features.shape[0],
            )  # fmt: skip
        if self._metrics:
            self._metrics.update("train", 0, preds, target, self._classes)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        device = pl_module.device
        skip = self._metrics.read_checks(trainer, device, "train", 1, self._classes)
        mean, seen = self._epoch_loss.reduce(device)
        if mean is not None:
            self.log_values(pl_module, {f"train/{self.name}_loss": mean})  # over every rank
        elif seen:
            self.info_once(
                trainer,
                "no-labelled-train-row",
                f"no training row of '{self.target}' was labelled this epoch: "
                f"train/{self.name}_loss is not logged",
            )
        if self._metrics:
            # torchmetrics already synced the states: every rank holds the global value.
            values = self._metrics.compute("train", 1, device, skip)
            self.log_values(pl_module, values)
        super().on_train_epoch_end(trainer, pl_module)

    def end_skipped_epoch(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """:meth:`TrainableCallback.end_skipped_epoch`, and the epoch's running loss, training
        metric states and data checks dropped (the uninterrupted run logged them); a clean
        evaluation the skipped validation made is marked on the schedule."""
        if self._clean:
            self._clean.schedule.mark_skipped(trainer, self._open_epoch)
        super().end_skipped_epoch(trainer, pl_module)
        self._epoch_loss.load(None)
        self._metrics.forget("train", pl_module.device)

    # ------------------------------------------------------------------ evaluation

    def _eval_epoch_start(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super()._eval_epoch_start(trainer, pl_module, stage)
        self._metrics.expose(pl_module, stage, loaders_of(trainer, stage))
        self._clean.prepare(trainer, pl_module, stage, loaders_of(trainer, stage))
        if self._metrics and not trainer.sanity_checking and self.optimizer_steps == 0:
            self.warn_once(
                trainer,
                f"untrained-{stage}",
                f"the probe has taken no optimizer step yet: this {WHERE[stage]} run logs "
                f"eval/{self.name}_* of an untrained probe",
            )

    def _eval_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, stage: str, outputs: Any,
        batch: Any, dataloader_idx: int,
    ) -> None:  # fmt: skip
        features = self._features(outputs, batch)
        with self.evaluation_context() as probe:
            preds = probe_predict(probe, features)
        self._classes = preds.shape[-1]
        self._publish(batch, preds)
        if self._metrics and not trainer.sanity_checking:
            target = self._target(outputs, batch, features, stage)
            self._metrics.check(stage, dataloader_idx, features, target)
            self._metrics.update(stage, dataloader_idx, preds, target, self._classes)
            self._clean.update(stage, dataloader_idx, features, target)

    def _eval_epoch_end(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not self._metrics or trainer.sanity_checking:
            return
        loaders, device = loaders_of(trainer, stage), pl_module.device
        skip = self._metrics.read_checks(trainer, device, stage, loaders, self._classes)
        values = self._metrics.compute(stage, loaders, device, skip)
        values.update(self._clean.compute(stage, loaders, device, skip))
        self.log_values(pl_module, values, add_dataloader_idx=False)  # synced by torchmetrics
