"""OnlineProbe: a probe trained on detached features while the backbone trains."""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor
from torchmetrics import Metric

from spt_core import (
    DataChecks,
    StageMetrics,
    callbacks_metrics,
    distributed,
    logger_writes_this_step,
    lookup,
    named_metrics,
)
from spt_probe.functional import masked_cross_entropy
from spt_trainable import TrainableCallback
from spt_trainable.module_factory import ModuleSpec
from spt_trainable.optimizers import OptimizerSpec
from spt_trainable.schedulers import SchedulerSpec

__all__ = ["OnlineProbe"]

_STAGES = {"train": "training", "val": "validation", "test": "test"}  # for messages

_DEFAULT_OPTIMIZER = {
    "type": "LARS",
    "lr": 0.1,
    "momentum": 0.0,
    "weight_decay": 0.0,
    "eta": 0.02,
    "eps": 1e-8,
    "clip_lr": True,
    "exclude_bias_n_norm": True,
    "nesterov": False,
    "dampening": 0.0,
}


class OnlineProbe(TrainableCallback):
    """Train a probe (linear or MLP) on frozen features during training and evaluate it.

    On every training batch the probe reads ``input`` (step outputs first, then the batch),
    detaches it, casts it to the probe's dtype and takes one step of its own optimizer
    against ``target``; the backbone's gradients and weights are never touched. On
    validation and test batches it predicts without training. Predictions are written to
    the batch dict as ``{name}_preds``.

    What loggers receive:

    - ``train/{name}_loss``: the epoch's mean training loss (over labelled rows, weighted by
      their number; averaged over ranks), at the end of each training epoch;
    - ``train/{name}_loss_step``: the batch's loss, on the steps the loggers write (every
      ``log_every_n_steps``);
    - ``train/{name}_{metric}``: at the end of each training epoch;
    - ``eval/{name}_{metric}``: at the end of each validation or test epoch (with
      ``/dataloader_idx_{i}`` when there are several loaders).

    Train, validation (per loader) and test own separate metric copies, exposed at
    ``pl_module.callbacks_metrics[name]``; the probe is at
    ``pl_module.callbacks_modules[name]``.

    **Targets.** With the default loss, ``target`` holds integer class indices, one per row;
    rows whose label is negative are unlabelled: they are left out of the loss (a batch
    with no labelled row steps on a zero gradient and adds nothing to the epoch's loss) and
    out of every metric. A ``loss_fn`` with an integer ``ignore_index`` attribute
    (``nn.CrossEntropyLoss``, ``nn.NLLLoss``) gets the same treatment: unlabelled rows reach
    it as its ``ignore_index``, and a batch without a labelled row gives a zero loss instead
    of its ``nan``. Any other ``loss_fn`` receives every row's target as it is (negative
    labels included: such a loss must ignore them itself). Integer targets with one value
    per row are class labels for any loss: metrics never see their unlabelled rows, and a
    label without an output of the probe (``>= C`` for ``C`` logits) raises a
    ``ValueError``. Targets of any other shape or dtype (regression, multi-label,
    reconstruction: whatever ``loss_fn`` takes) reach the loss and the metrics unchanged and
    are not checked as labels. Floating-point or non-tensor targets with the default loss
    raise at the first batch that carries them.

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
    epoch, so every rank evaluates, and every checkpoint written at an epoch's end holds, the
    same probe (see :class:`~spt_trainable.TrainableCallback`).

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
            :mod:`spt_trainable.scheduler_defaults`);
            ``None`` keeps the learning rate constant.
        accumulate_grad_batches: Training batches per probe step.
        gradient_clip_val: Clip threshold, ``None`` for no clipping.
        gradient_clip_algorithm: ``"norm"`` or ``"value"``.
        metrics: A metric, list/tuple of metrics (named after their class, e.g. ``accuracy``
            and ``accuracy_top5``), or ``{name: metric}``; each is updated with
            ``(logits, target)``. ``None`` logs the loss only. The probe adds no host sync
            per batch, but torchmetrics' classification metrics do on CUDA (argument
            validation unless ``validate_args=False``; ``torch.bincount`` in ``update``
            unless deterministic algorithms are on).
        verbose: See :class:`~spt_core.SPTCallback`.

    Raises:
        TypeError: For a missing ``name``/``input``/``target``/``probe``, or an argument of
            the wrong type.
        ValueError: For an empty key or invalid training options.

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
        verbose: bool | None = None,
    ) -> None:
        if module is not None and not isinstance(module, LightningModule):
            raise TypeError(
                f"module must be the LightningModule being trained or None, got "
                f"{type(module).__name__} {module!r}; pass name=..., input=... as keywords"
            )
        for argument, value in (("name", name), ("input", input), ("target", target)):
            if value is None:
                raise TypeError(f"OnlineProbe() missing required argument {argument!r}")
            if not isinstance(value, str) or not value:
                raise TypeError(f"{argument} must be a non-empty str, got {value!r}")
        if probe is None:
            raise TypeError("OnlineProbe() missing required argument 'probe'")
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable(logits, target) or None, got {loss_fn!r}")
        super().__init__(
            name,
            module=probe,
            optimizer=optimizer,
            scheduler=scheduler,
            accumulate_grad_batches=accumulate_grad_batches,
            gradient_clip_val=gradient_clip_val,
            gradient_clip_algorithm=gradient_clip_algorithm,
            verbose=verbose,
        )
        named = named_metrics(metrics, owner=self.state_key, argument="metrics")
        for key, metric in named.items():
            duck = all(callable(getattr(metric, m, None)) for m in ("update", "compute", "reset"))
            if not (isinstance(metric, Metric) or duck):
                raise TypeError(
                    f"metrics[{key!r}] must be a torchmetrics Metric (or have update/compute/"
                    f"reset), got {metric!r}"
                )
        self.input = input
        self.target = target
        self.loss_fn = loss_fn if loss_fn is not None else masked_cross_entropy
        # (sum of loss * labelled rows, labelled rows, rows) this epoch, on the device
        self._loss_total: Tensor | None = None
        self._lightning_module = module
        self._metrics = StageMetrics(named)
        self._checks = DataChecks()
        self._classes: int | None = None  # the probe's output width, seen at its first call

    def default_optimizer(self) -> OptimizerSpec:
        """``LARS(lr=0.1, momentum=0, weight_decay=0, eta=0.02, eps=1e-8, clip_lr=True,
        exclude_bias_n_norm=True, nesterov=False, dampening=0)``, every argument spelled out.

        The seed's default: LARS with a clipped layer-wise rate and no momentum."""
        return dict(_DEFAULT_OPTIMIZER)

    # ------------------------------------------------------------------ setup

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._lightning_module is not None and self._lightning_module is not pl_module:
            raise ValueError(
                f"{self.state_key}: module= was given a different LightningModule than the "
                "one being run; pass the trained module or leave module=None"
            )
        super().setup(trainer, pl_module, stage)

    def _expose_metrics(self, pl_module: LightningModule, stage: str, loaders: int) -> None:
        for idx in range(loaders):
            self._metrics.get(stage, idx, pl_module.device)
        callbacks_metrics(pl_module)[self.name] = self._metrics.all_live()

    # ------------------------------------------------------------------ training

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._metrics:
            self.info_if_no_validation(trainer, f"eval/{self.name}_*")

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._expose_metrics(pl_module, "train", 1)

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        features = self._features(outputs, batch)
        target = self._target(outputs, batch, features, "train")
        classes = self._is_class_labels(target)
        finite = self._checks.update("train", 0, features, self._labels(target, classes))
        # A row with a non-finite feature is zeroed (and unlabelled where unlabelled rows are
        # left out): one NaN row would otherwise turn every weight of the probe into NaN.
        features = torch.where(finite.view(-1, *[1] * (features.dim() - 1)), features, 0)
        with self.training_context() as probe:
            logits = probe(features)
            self._classes = logits.shape[-1]
            loss, counted = self._training_loss(logits, target, finite, classes)
        self.backward_and_step(loss, trainer, batch_idx)
        loss, preds = loss.detach(), logits.detach()
        self._publish(batch, preds)
        self._add_loss(loss, counted, features.shape[0])
        if logger_writes_this_step(trainer):
            pl_module.log(
                f"train/{self.name}_loss_step",
                loss,
                on_step=True,
                on_epoch=False,
                batch_size=features.shape[0],
            )
        if self._metrics:
            self._update_metrics("train", 0, preds, target, classes)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        ((non_finite, top),) = self._checks.read("train", 1, pl_module.device)
        self._check_labels(top, _STAGES["train"])
        self._log_epoch_loss(trainer, pl_module)
        if non_finite:
            self.warn_once(
                trainer,
                "non-finite-train",
                f"{non_finite} training rows of '{self.input}' had non-finite values: they were "
                f"zeroed for the probe's training, and train/{self.name}_* metrics of this "
                "epoch are not logged",
            )
        if self._metrics:
            skip = {0} if non_finite else set()
            values = self._metrics.compute_and_reset("train", 1, pl_module.device, skip=skip)
            # torchmetrics already synced the states: every rank holds the global value, and
            # sync_dist only averages identical numbers (it silences Lightning's DDP warning).
            self.log_values(pl_module, self._prefixed("train", values), sync_dist=True)
        super().on_train_epoch_end(trainer, pl_module)

    # ------------------------------------------------------------------ evaluation

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._expose_metrics(pl_module, "val", len(trainer.num_val_batches))
        self._say_if_untrained(trainer, "val")

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._expose_metrics(pl_module, "test", len(trainer.num_test_batches))
        self._say_if_untrained(trainer, "test")

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._evaluate("val", trainer, outputs, batch, dataloader_idx)

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._evaluate("test", trainer, outputs, batch, dataloader_idx)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log_eval("val", trainer, pl_module, len(trainer.num_val_batches))

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log_eval("test", trainer, pl_module, len(trainer.num_test_batches))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "loss_total": self._loss_total}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        total = state.pop("loss_total", None)
        if total is not None and total.numel() == 2:  # 0.2's (loss * rows, rows): all labelled
            total = torch.cat((total, total[1:]))
        self._loss_total = total
        super().load_state_dict(state)

    # ------------------------------------------------------------------ internals

    def _add_loss(self, loss: Tensor, counted: Tensor | int, rows: int) -> None:
        """Add one batch to the epoch's mean loss, on the device (no host sync).

        ``counted`` is how many rows ``loss`` averages (the labelled ones), ``rows`` how many
        the batch has.
        """
        counted = torch.as_tensor(counted, dtype=torch.float32, device=loss.device)
        batch = torch.stack((loss.float() * counted, counted, counted.new_tensor(rows)))
        total = self._loss_total
        self._loss_total = batch if total is None else total.to(batch.device) + batch

    def _log_epoch_loss(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Log the epoch's mean loss over every rank's labelled rows (one collective, one
        host sync; a rank without a batch takes part with zeros)."""
        total = self._loss_total
        self._loss_total = None
        if total is None:
            total = torch.zeros(3, device=pl_module.device)
        distributed.all_reduce_mean([total])  # sums over ranks, up to a common factor
        _, counted, rows = total.tolist()
        if counted > 0:
            self.log_values(
                pl_module, {f"train/{self.name}_loss": total[0] / total[1]}, sync_dist=True
            )
        elif rows > 0:
            self.info_once(
                trainer,
                "no-labelled-train-row",
                f"no training row of '{self.target}' was labelled this epoch: "
                f"train/{self.name}_loss is not logged",
            )

    def _target(self, outputs: Any, batch: Any, features: Tensor, stage: str) -> Tensor:
        """The batch's targets, checked against what the loss needs (shapes and dtypes only:
        no host sync)."""
        target = lookup(self.target, outputs, batch, owner=self.state_key)
        where = _STAGES[stage]
        if not isinstance(target, Tensor):
            kind = type(target).__name__
            items = {type(item).__name__ for item in target} if isinstance(target, list) else ()
            hint = (
                "; class names must be mapped to integer class indices first"
                if "str" in items
                else ""
            )
            raise TypeError(
                f"{self.state_key}: a {where} batch of '{self.target}' holds a {kind}, not a "
                f"tensor{hint}"
            )
        if target.dim() == 0 or target.shape[0] != features.shape[0]:
            raise ValueError(
                f"{self.state_key}: a {where} batch of '{self.target}' has shape "
                f"{tuple(target.shape)}, but '{self.input}' has {features.shape[0]} rows; "
                "the targets need one entry per row, first"
            )
        if self.loss_fn is masked_cross_entropy:
            if not _is_integer(target):
                raise TypeError(
                    f"{self.state_key}: a {where} batch of '{self.target}' holds {target.dtype} "
                    "values, but the default loss (cross-entropy) takes integer class indices "
                    "(cast them with .long()); pass a loss_fn for regression, soft or "
                    "multi-label targets"
                )
            if target.dim() != 1:
                raise ValueError(
                    f"{self.state_key}: a {where} batch of '{self.target}' has shape "
                    f"{tuple(target.shape)}, but the default loss (cross-entropy) takes one "
                    "class index per row, shape (rows,); pass a loss_fn for other targets"
                )
        return target.detach().to(features.device)

    def _is_class_labels(self, target: Tensor) -> bool:
        """Whether ``target`` holds one integer class index per row (unlabelled: < 0)."""
        return _is_integer(target) and target.dim() == 1

    @staticmethod
    def _labels(target: Tensor, classes: bool) -> Tensor:
        """What the label checks see: the targets if they are class labels, else nothing."""
        return target if classes else target.new_empty(0, dtype=torch.long)

    def _ignore_index(self) -> int | None:
        ignore = getattr(self.loss_fn, "ignore_index", None)
        return ignore if isinstance(ignore, int) and not isinstance(ignore, bool) else None

    def _training_loss(
        self, logits: Tensor, target: Tensor, finite: Tensor, classes: bool
    ) -> tuple[Tensor, Tensor | int]:
        """The loss to step on, and how many rows it averages (for the epoch's mean).

        Class labels: unlabelled rows (``< 0``), labels without an output (reported at the
        epoch's end) and rows with non-finite features are left out of the default loss and
        of a loss with an ``ignore_index``. Everything else reaches ``loss_fn`` as it is.
        """
        rows = target.shape[0]
        ignore = self._ignore_index()
        default = self.loss_fn is masked_cross_entropy
        if not classes or not (default or ignore is not None):
            return self.loss_fn(logits, target), rows
        labelled = finite & (target >= 0) & (target < logits.shape[-1])
        if default:
            return masked_cross_entropy(logits, torch.where(labelled, target, -1)), labelled.sum()
        loss = self.loss_fn(logits, torch.where(labelled, target, ignore))
        # A mean over no row is 0/0: such a batch steps on a zero gradient, not a nan.
        return torch.where(labelled.any(), loss, torch.zeros_like(loss)), labelled.sum()

    def _say_if_untrained(self, trainer: Trainer, stage: str) -> None:
        if self._metrics and not trainer.sanity_checking and self.optimizer_steps == 0:
            self.warn_once(
                trainer,
                f"untrained-{stage}",
                f"the probe has taken no optimizer step yet: this {_STAGES[stage]} run logs "
                f"eval/{self.name}_* of an untrained probe",
            )

    def _publish(self, batch: Any, preds: Tensor) -> None:
        if isinstance(batch, MutableMapping):
            batch[f"{self.name}_preds"] = preds

    def _features(self, outputs: Any, batch: Any) -> Tensor:
        raw = lookup(self.input, outputs, batch, owner=self.state_key)
        if not isinstance(raw, Tensor):
            raise TypeError(
                f"{self.state_key}: '{self.input}' holds a {type(raw).__name__}, not a tensor "
                "of features"
            )
        features = self.prepare_input(raw)
        self.check_input_width(features, self.input)
        return features

    def _check_labels(self, top: int, where: str) -> None:
        """Raise if the largest label of the epoch (``top``) has no output of the probe."""
        if self._classes is not None and top >= self._classes:
            raise ValueError(
                f"{self.state_key}: a {where} batch of '{self.target}' holds the label {top}, "
                f"but the probe outputs {self._classes} classes (labels must be < "
                f"{self._classes}; negative labels are ignored)"
            )

    def _update_metrics(
        self, stage: str, idx: int, preds: Tensor, target: Tensor, classes: bool
    ) -> None:
        """Update ``stage``'s metrics; with class labels, only with the labelled rows."""
        try:
            if classes:
                self._metrics.update_labelled(stage, idx, preds, target)
            else:
                self._metrics.update(stage, idx, preds, target)
        except (RuntimeError, ValueError, IndexError):
            # A metric refused the batch: say so if a label is why (a sync on the way out).
            if classes:
                top = int(target.max()) if target.numel() else -1
                self._check_labels(top, _STAGES[stage])
            raise

    def _evaluate(self, stage: str, trainer: Trainer, outputs: Any, batch: Any, idx: int) -> None:
        features = self._features(outputs, batch)
        with self.evaluation_context() as probe:
            preds = probe(features)
        self._classes = preds.shape[-1]
        self._publish(batch, preds)
        if self._metrics and not trainer.sanity_checking:
            target = self._target(outputs, batch, features, stage)
            classes = self._is_class_labels(target)
            self._checks.update(stage, idx, features, self._labels(target, classes))
            self._update_metrics(stage, idx, preds, target, classes)

    def _log_eval(
        self, stage: str, trainer: Trainer, pl_module: LightningModule, loaders: int
    ) -> None:
        if not self._metrics or trainer.sanity_checking:
            return
        where = _STAGES[stage]
        skip = set()
        for idx, (non_finite, top) in enumerate(
            self._checks.read(stage, loaders, pl_module.device)
        ):
            self._check_labels(top, where)
            if non_finite:
                skip.add(idx)
                self.warn_once(
                    trainer,
                    f"non-finite-{stage}-{idx}",
                    f"{non_finite} {where} rows of '{self.input}' (loader {idx}) had non-finite "
                    f"values: the probe cannot score them, so eval/{self.name}_* is not logged "
                    "for this loader this epoch",
                )
        values = self._metrics.compute_and_reset(stage, loaders, pl_module.device, skip=skip)
        self.log_values(
            pl_module, self._prefixed("eval", values), sync_dist=True, add_dataloader_idx=False
        )

    def _prefixed(self, prefix: str, values: dict[str, Tensor]) -> dict[str, Tensor]:
        return {f"{prefix}/{self.name}_{key}": value for key, value in values.items()}


def _is_integer(target: Tensor) -> bool:
    return not (target.is_floating_point() or target.is_complex() or target.dtype == torch.bool)
