"""LatentViz: a 2D map of the latent space, learned, drawn and scored while the backbone trains."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn

from spt_core import lookup
from spt_core.loops import validates_after_last_batch
from spt_latentviz._checks import check_arguments, check_labels
from spt_latentviz._outputs import MapOutputs
from spt_latentviz._training import MapTraining
from spt_latentviz.functional import map_scores
from spt_queue import OnlineQueue

__all__ = ["DEFAULT_LR", "LatentViz"]

DEFAULT_LR = 1e-2
"""Default AdamW learning rate, measured on scikit-learn's digits (standardised, 64-d) with
``projection_mlp(64)``, 300 full-queue updates, trustworthiness@10, mean of 3 seeds: lr 1e-3
gives 0.883, 3e-3 0.933, 1e-2 0.963, 3e-2 0.964. 1e-2 is the smallest rate on the plateau."""


class LatentViz(MapTraining, MapOutputs):
    """Learns a parametric 2D map of the features online, draws it and says how faithful it is.

    Every ``update_interval`` training batches (after ``warmup_epochs``) the ``projection``
    takes one optimizer step on this rank's most recent ``queue_length`` features (an
    :class:`~spt_queue.OnlineQueue` of ``input``, found or created at setup): the ``k_neighbors``
    nearest neighbours of each row in feature space (:func:`spt_distance.knn_search`, rebuilt
    only once a tenth of the rows are new) are pulled together and ``n_negatives`` random rows
    per neighbour pair pushed apart, with a Student-t kernel in 2D
    (:func:`~spt_latentviz.functional.projection_loss`). Features come detached from
    the queue: no gradient reaches the backbone. Under DDP every rank trains on its own rows
    and the gradients are averaged, so the projection stays identical on every rank.

    At the end of every epoch ``e`` with ``e % plot_interval == 0`` and
    ``e >= warmup_epochs`` (the seed's rule: epochs 0, 10, 20... for ``plot_interval=10``;
    with ``warmup_epochs=3`` the first map is drawn at epoch 10), and at the fit's last epoch
    (never in the sanity check; in ``trainer.validate`` or ``trainer.test`` after a fit, at
    the epoch the fit reached, if it has no map yet), the callback gathers the queue rows of
    every rank (at the end of the validation epoch, or of the training epoch when no
    validation ran); while fitting, it fits the map to them (its points along the same loss,
    then the projection to the points: :meth:`refine_map`) and aligns the frame to the
    previous one; then it

    - logs ``eval/{name}_trustworthiness`` and ``eval/{name}_knn_recall`` at ``k_neighbors``;
    - on rank 0 writes ``epoch_XXXX.npz`` (``coordinates``, ``labels`` when ``target`` is set,
      ``epoch`` and the two scores) to ``save_dir`` (default:
      ``{trainer.default_root_dir}/latent_viz_{name}``) and, with matplotlib installed, the
      picture ``epoch_XXXX.png``, also sent to every logger that takes images (``log_image``,
      e.g. Weights & Biases, or TensorBoard's ``add_image``) under ``eval/{name}_map``;
    - on rank 0, to a ``WandbLogger``, logs the table ``{name}/2d_latent_table`` (columns
      ``x``, ``y`` and, with ``target``, ``class``; one row per point) and
      ``{name}/current_epoch``, as the seed does.

    The projection's loss is logged as ``train/{name}_loss_step`` (this rank's update loss,
    as ``OnlineProbe`` logs its batch loss, so the loggers, on rank 0, write rank 0's; on the
    steps whose logs the Trainer writes: ``log_every_n_steps``) and ``train/{name}_loss``
    (the mean over the epoch's updates and ranks, at the end of each training epoch that had
    an update; a mid-epoch checkpoint keeps every rank's share of it, so a resumed run logs
    what the uninterrupted run does).

    Args:
        name: Unique identifier (logged names, ``pl_module.callbacks_modules[name]``,
            checkpoint slot, default folder).
        input: Key of the features in the step outputs or the batch.
        target: Key of the class labels that colour the picture, or ``None`` (one colour).
        projection: The module mapping ``D`` features to 2 (an ``nn.Module``, a callable
            returning one, or a Hydra config); see :func:`~spt_latentviz.projection_mlp`.
        queue_length: Rows per rank the map is trained on and drawn from.
        k_neighbors: Neighbours per point in the graph and in the faithfulness scores.
        n_negatives: Negative samples per neighbour pair.
        optimizer: Any form of :func:`spt_trainable.create_optimizer`; ``None``:
            ``AdamW(lr=1e-2, weight_decay=1e-2)``.
        scheduler: Any form of :func:`spt_trainable.create_scheduler`; ``None``: constant.
        accumulate_grad_batches: Updates whose gradients are summed per optimizer step.
        update_interval: Train the projection once every this many training batches.
        warmup_epochs: Epochs without training or drawing at the start of the fit.
        distance_metric: Feature-space metric, one of :data:`spt_distance.METRICS`.
        plot_interval: Draw and score at the end of the epochs that are multiples of it.
        save_dir: Folder of the ``.npz`` and ``.png`` files, created (and checked to be
            writable, by rank 0) when fit starts.
        input_dim: Feature size (int or shape), checked by the queue; ``None``: any.
        verbose: See :class:`~spt_core.SPTCallback` (keyword-only, like every parameter the
            seed does not have).

    Raises:
        TypeError: For a non-string ``input``/``target``/``save_dir``, a count that is not an
            int, an ``input_dim`` that is not an int or a tuple/list of ints, or a
            projection, optimizer or scheduler of no accepted form; during training, at the
            first batch, a ``target`` that holds strings (labels must be numbers, e.g. class
            indices).
        ValueError: For an empty ``input``/``target``, a count below its minimum,
            ``queue_length <= 2 * k_neighbors`` (the scores need more than twice ``k``
            rows), an unknown metric, an ``input_dim`` size below 1, a ``name`` or
            ``save_dir`` with a NUL character, or (without ``save_dir``) a ``name`` that
            cannot be part of the folder name ``latent_viz_{name}`` (a path separator, more
            than 244 bytes). When fit starts: a ``save_dir`` where rank 0 cannot write.
            Messages name the callback's ``state_key`` and the argument.

    Example:
        >>> from spt_latentviz import projection_mlp
        >>> viz = LatentViz("map", "embedding", "label", projection=projection_mlp(8))
        >>> viz.state_key, viz.k_neighbors, viz.default_optimizer()["lr"]
        ('LatentViz[name=map]', 15, 0.01)
    """

    module_argument = "projection"

    def __init__(
        self,
        name: str,
        input: str,
        target: str | None,
        projection: nn.Module | Any,
        queue_length: int = 2048,
        k_neighbors: int = 15,
        n_negatives: int = 5,
        optimizer: Any = None,
        scheduler: Any = None,
        accumulate_grad_batches: int = 1,
        update_interval: int = 10,
        warmup_epochs: int = 0,
        distance_metric: str = "euclidean",
        plot_interval: int = 10,
        save_dir: str | os.PathLike[str] | None = None,
        input_dim: int | Sequence[int] | None = None,
        *,
        verbose: bool | None = None,
    ) -> None:
        super().__init__(
            name,
            module=projection,
            optimizer=optimizer,
            scheduler=scheduler,
            accumulate_grad_batches=accumulate_grad_batches,
            verbose=verbose,
        )
        check_arguments(
            self.state_key,
            name=name,
            input=input,
            target=target,
            queue_length=queue_length,
            k_neighbors=k_neighbors,
            n_negatives=n_negatives,
            update_interval=update_interval,
            warmup_epochs=warmup_epochs,
            distance_metric=distance_metric,
            plot_interval=plot_interval,
            save_dir=save_dir,
            input_dim=input_dim,
        )
        self.input, self.target, self.input_dim = input, target, input_dim
        self.queue_length, self.k_neighbors = queue_length, k_neighbors
        self.n_negatives, self.distance_metric = n_negatives, distance_metric
        self.update_interval, self.warmup_epochs = update_interval, warmup_epochs
        self.plot_interval, self.save_dir = plot_interval, save_dir
        self.train_batches = 0
        self.last_plot_epoch: int | None = None
        self._input_queue: OnlineQueue | None = None
        self._target_queue: OnlineQueue | None = None
        self._generator: torch.Generator | None = None
        self._graph: tuple[int, Tensor, Tensor | None] | None = None
        self._non_finite_epoch: int | None = None
        self._loss_total: Tensor | None = None  # (sum of the update losses, updates) this epoch
        self._scaling: tuple[Tensor, Tensor] | None = None
        self._alignment: tuple[Tensor, Tensor] | None = None
        self._frame_module: dict[str, Tensor] | None = None

    def default_optimizer(self) -> dict[str, Any]:
        """``AdamW(lr=1e-2, weight_decay=1e-2)`` (see :data:`DEFAULT_LR`)."""
        return {"type": "AdamW", "lr": DEFAULT_LR, "weight_decay": 1e-2}

    @property
    def projection(self) -> nn.Module:
        """The trained projection (the same object as :attr:`module`)."""
        return self.module

    # ------------------------------------------------------------------ Lightning hooks

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == TrainerFn.FITTING:
            self._find_queues(trainer)
            self._check_folder(trainer)

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.target is not None:
            labels = lookup(self.target, outputs, batch, owner=self.state_key)
            check_labels(labels, self.state_key, self.target)
        if trainer.current_epoch < self.warmup_epochs:
            self.info_once(
                trainer,
                "warmup",
                f"warm-up epoch {trainer.current_epoch + 1}/{self.warmup_epochs}: "
                "the projection waits",
            )
            return
        self.train_batches += 1
        if self.train_batches % self.update_interval == 0:
            self.update_projection(trainer, pl_module)

    def _eval_epoch_end(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if trainer.sanity_checking:
            return
        if trainer.state.fn != TrainerFn.FITTING and self._input_queue is None:
            self.info_once(
                trainer, "no-fit", "no map: the queues are filled by a fit, and none ran yet"
            )
            return
        if self._plot_due(trainer):
            self.visualize(trainer, pl_module, *self._gathered_rows())

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log_epoch_loss(pl_module)
        super().on_train_epoch_end(trainer, pl_module)
        if self._plot_due(trainer):  # no validation epoch drew this epoch's map
            self.visualize(trainer, pl_module, *self._gathered_rows())

    # ------------------------------------------------------------------ the work

    def visualize(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        features: Tensor,
        labels: Tensor | None = None,
    ) -> dict[str, Tensor] | None:
        """Project ``features``, log the faithfulness scores and (on rank 0) write the files.

        Every rank must call it with the same gathered ``features``.

        Returns:
            The scores (``trustworthiness``, ``knn_recall``), or ``None`` when there are too
            few rows.
        """
        epoch = trainer.current_epoch
        drawn = self._draw(trainer, epoch, features, labels)
        if drawn is None:
            return None
        x, labels = drawn
        z = self.project(x)
        scores = map_scores(x, z, self.k_neighbors, self.distance_metric)
        # The same on every rank (the same rows and map): no sync_dist, no second reduction.
        self.log_values(pl_module, {f"eval/{self.name}_{key}": v for key, v in scores.items()})
        if trainer.is_global_zero:
            self._write(trainer, epoch, z, labels, scores)
        return scores

    def end_skipped_epoch(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """:meth:`~spt_trainable.TrainableCallback.end_skipped_epoch` with the epoch's running
        loss dropped, and the map of the skipped epoch fitted if one was due, where the
        uninterrupted run drew it: at the validation after the epoch's last batch, else after
        the epoch's end."""
        epoch, self._loss_total = self._open_epoch, None
        due = epoch is not None and self._plot_due(trainer, epoch)
        validated = epoch is not None and validates_after_last_batch(trainer, epoch)
        if due and validated:
            self._draw(trainer, epoch, *self._gathered_rows())
        super().end_skipped_epoch(trainer, pl_module)
        if due and not validated:
            self._draw(trainer, epoch, *self._gathered_rows())

    # ------------------------------------------------------------------ internals

    def _plot_due(self, trainer: Trainer, epoch: int | None = None) -> bool:
        epoch = trainer.current_epoch if epoch is None else epoch
        last = trainer.state.fn == TrainerFn.FITTING and epoch == (trainer.max_epochs or 0) - 1
        return (
            self._input_queue is not None
            and epoch >= self.warmup_epochs
            and (epoch % self.plot_interval == 0 or last)
            and self.last_plot_epoch != epoch
        )
