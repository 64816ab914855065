"""LatentViz: a 2D map of the latent space, learned, drawn and scored while the backbone trains."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn

from spt_core import distributed, logger_writes_this_step, lookup
from spt_distance import METRICS
from spt_latentviz import plotting
from spt_latentviz._checks import check_input_dim, check_int, check_name, unwritable_reason
from spt_latentviz.functional import (
    knn_recall,
    neighbor_embedding_loss,
    neighbor_graph,
    sample_negatives,
    trustworthiness,
)
from spt_queue import OnlineQueue, find_or_create_queue, read_aligned
from spt_trainable import TrainableCallback

__all__ = ["DEFAULT_LR", "LatentViz"]

DEFAULT_LR = 1e-2
"""Default AdamW learning rate, measured on scikit-learn's digits (standardised, 64-d) with
``projection_mlp(64)``, 300 full-queue updates, trustworthiness@10, mean of 3 seeds: lr 1e-3
gives 0.883, 3e-3 0.933, 1e-2 0.963, 3e-2 0.964. 1e-2 is the smallest rate on the plateau."""


class LatentViz(TrainableCallback):
    """Learns a parametric 2D map of the features online, draws it and says how faithful it is.

    Every ``update_interval`` training batches (after ``warmup_epochs``) the ``projection``
    takes one optimizer step on this rank's most recent ``queue_length`` features (an
    :class:`~spt_queue.OnlineQueue` of ``input``, found or created at setup): the ``k_neighbors``
    nearest neighbours of each row in feature space (:func:`spt_distance.knn_search`, rebuilt
    only once a tenth of the rows are new) are pulled together and ``n_negatives`` random rows
    per neighbour pair pushed apart, with a Student-t kernel in 2D
    (:func:`~spt_latentviz.functional.neighbor_embedding_loss`). Features come detached from
    the queue: no gradient reaches the backbone. Under DDP every rank trains on its own rows
    and the gradients are averaged, so the projection stays identical on every rank.

    At the end of every epoch ``e`` with ``e % plot_interval == 0`` and
    ``e >= warmup_epochs`` (the seed's rule: epochs 0, 10, 20... for ``plot_interval=10``;
    with ``warmup_epochs=3`` the first map is drawn at epoch 10; never in the sanity check;
    in ``trainer.validate`` after a fit, at the epoch the fit reached, if it has no map yet),
    the projection maps the queue rows of every rank, gathered by this callback at the end of
    the validation epoch (or of the training epoch when no validation ran), and the callback

    - logs ``eval/{name}_trustworthiness`` and ``eval/{name}_knn_recall`` at ``k_neighbors``;
    - on rank 0 writes ``epoch_XXXX.npz`` (``coordinates``, ``labels`` when ``target`` is set,
      ``epoch`` and the two scores) to ``save_dir`` (default:
      ``{trainer.default_root_dir}/latent_viz_{name}``) and, with matplotlib installed, the
      picture ``epoch_XXXX.png``, also sent to every logger that takes images (``log_image``,
      e.g. Weights & Biases, or TensorBoard's ``add_image``) under ``eval/{name}_map``;
    - on rank 0, to a ``WandbLogger``, logs the table ``{name}/2d_latent_table`` (columns
      ``x``, ``y`` and, with ``target``, ``class``; one row per point) and
      ``{name}/current_epoch``, as the seed does.

    The projection's loss is logged as ``train/{name}_loss_step`` (the update's value,
    averaged over ranks, on the steps whose logs the Trainer writes: ``log_every_n_steps``)
    and ``train/{name}_loss`` (the mean over the epoch's updates and ranks, at the end of
    each training epoch that had an update).

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
        verbose: See :class:`~spt_core.SPTCallback`.

    Raises:
        ValueError: For a non-positive count, ``queue_length <= 2 * k_neighbors`` (the
            scores need more than twice ``k`` rows), an unknown metric, a bad
            ``input_dim``, a ``name`` or ``save_dir`` with a NUL character, or (without
            ``save_dir``) a ``name`` that cannot be part of the folder name
            ``latent_viz_{name}`` (a path separator, more than 244 bytes). When fit starts:
            a ``save_dir`` where rank 0 cannot write.
        TypeError: For a non-string ``input``/``target``/``save_dir`` or a projection,
            optimizer or scheduler of no accepted form; during training, at the first batch,
            a ``target`` that holds strings (labels must be numbers, e.g. class indices).

    Example:
        >>> from spt_latentviz import projection_mlp
        >>> viz = LatentViz("map", "embedding", "label", projection=projection_mlp(8))
        >>> viz.state_key, viz.k_neighbors, viz.default_optimizer()["lr"]
        ('LatentViz[name=map]', 15, 0.01)
    """

    module_argument = "projection"

    graph_refresh: float = 0.1
    """Rebuild the neighbour graph once this fraction of the queue's rows is new."""

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
        if not isinstance(input, str) or not input:
            raise TypeError(f"input must be a non-empty str (a key), got {input!r}")
        if target is not None and (not isinstance(target, str) or not target):
            raise TypeError(f"target must be a non-empty str (a key) or None, got {target!r}")
        self.k_neighbors = check_int(k_neighbors, "k_neighbors", 1)
        self.queue_length = check_int(queue_length, "queue_length", 1)
        if queue_length <= 2 * k_neighbors:
            raise ValueError(
                f"queue_length must exceed 2 * k_neighbors = {2 * k_neighbors} (trustworthiness "
                f"at k needs more than 2k rows), got queue_length={queue_length}"
            )
        self.n_negatives = check_int(n_negatives, "n_negatives", 1)
        self.update_interval = check_int(update_interval, "update_interval", 1)
        self.warmup_epochs = check_int(warmup_epochs, "warmup_epochs", 0)
        self.plot_interval = check_int(plot_interval, "plot_interval", 1)
        if distance_metric not in METRICS:
            raise ValueError(f"distance_metric must be one of {METRICS}, got {distance_metric!r}")
        if save_dir is not None and not isinstance(save_dir, (str, os.PathLike)):
            raise TypeError(f"save_dir must be a str, a path or None, got {save_dir!r}")
        check_name(name, self.state_key, default_folder=save_dir is None)
        if save_dir is not None and "\x00" in str(os.fspath(save_dir)):
            raise ValueError(
                f"{self.state_key}: save_dir must not contain a NUL character, got {save_dir!r}"
            )
        self.input = input
        self.target = target
        self.distance_metric = distance_metric
        self.save_dir = save_dir
        self.input_dim = check_input_dim(input_dim)
        self.train_batches = 0
        self.last_plot_epoch: int | None = None
        self._input_queue: OnlineQueue | None = None
        self._target_queue: OnlineQueue | None = None
        self._generator: torch.Generator | None = None
        self._graph: tuple[int, Tensor, Tensor | None] | None = None
        self._hinted_plot_extra = False
        self._non_finite_epoch: int | None = None
        self._loss_total: Tensor | None = None  # (sum of the update losses, updates) this epoch

    def default_optimizer(self) -> dict[str, Any]:
        """``AdamW(lr=1e-2, weight_decay=1e-2)`` (see :data:`DEFAULT_LR`)."""
        return {"type": "AdamW", "lr": DEFAULT_LR, "weight_decay": 1e-2}

    @property
    def projection(self) -> nn.Module:
        """The trained projection (the same object as :attr:`module`)."""
        return self.module

    def project(self, features: Tensor) -> Tensor:
        """Map ``features`` (``(N, ...)``, flattened to ``(N, D)``) to ``(N, 2)`` fp32 points."""
        x = self.prepare_input(features).reshape(len(features), -1)
        self.check_input_width(x, self.input)
        with self.evaluation_context() as projection:
            z = projection(x)
        self._check_map(z, len(x))
        return z.float()

    # ------------------------------------------------------------------ Lightning hooks

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != TrainerFn.FITTING:
            return
        self._input_queue = find_or_create_queue(
            trainer,
            self.input,
            self.queue_length,
            self.input_dim,
            previous=self._input_queue,
            consumer=self.state_key,
        )
        if self.target is not None:
            self._target_queue = find_or_create_queue(
                trainer,
                self.target,
                self.queue_length,
                previous=self._target_queue,
                consumer=self.state_key,
            )
        if self._generator is None:
            seed = (torch.initial_seed() + distributed.rank()) % (1 << 63)
            self._generator = torch.Generator().manual_seed(seed)
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
            self._check_labels(lookup(self.target, outputs, batch, owner=self.state_key))
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

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
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

    def update_projection(self, trainer: Trainer, pl_module: LightningModule) -> Tensor | None:
        """One training step of the projection on this rank's queue (run every
        ``update_interval`` batches); every rank must call it together.

        Returns:
            The loss, or ``None`` when the queue holds too few rows yet.
        """
        graph = self._current_graph(trainer)
        if graph is None:
            return None
        rows, neighbors = graph
        with self.training_context() as projection:
            if neighbors is None:
                # Too few finite rows here: a zero gradient keeps the ranks' steps in lockstep.
                loss = sum(p.sum() for p in projection.parameters()) * 0.0
            else:
                z = projection(rows)
                self._check_map(z, len(rows))
                negatives = sample_negatives(
                    len(rows), neighbors, self.n_negatives, self._generator
                )
                loss = neighbor_embedding_loss(z, neighbors, negatives)
        self.backward_and_step(loss, trainer)
        loss = loss.detach()
        update = torch.stack((loss.float(), torch.ones_like(loss, dtype=torch.float32)))
        total = self._loss_total
        self._loss_total = update if total is None else total.to(update.device) + update
        if logger_writes_this_step(trainer):
            pl_module.log(
                f"train/{self.name}_loss_step",
                loss,
                on_step=True,
                on_epoch=False,
                sync_dist=True,
                batch_size=len(rows),
            )
        return loss

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
        self.last_plot_epoch = epoch
        x = self.prepare_input(features)
        x = x.reshape(len(x), -1)
        finite = torch.isfinite(x).all(dim=1)
        if not bool(finite.all()):  # one sync per plot; the same gathered rows on every rank
            x = x[finite]
            labels = None if labels is None else labels[finite.to(labels.device)]
            self.warn_once(trainer, "non-finite-map", "rows with non-finite values are left out")
        n, k = len(x), self.k_neighbors
        if n <= 2 * k:
            self.info_once(
                trainer,
                "short-map",
                f"the queue holds {n} rows; scores at k={k} need more than {2 * k}: no map yet",
            )
            return None
        z = self.project(x)
        scores = {
            "trustworthiness": trustworthiness(x, z, k, self.distance_metric).float(),
            "knn_recall": knn_recall(x, z, k, self.distance_metric),
        }
        self.log_values(
            pl_module, {f"eval/{self.name}_{key}": v for key, v in scores.items()}, sync_dist=True
        )
        if trainer.is_global_zero:
            self._write(trainer, epoch, z, labels, scores)
        return scores

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["latent_viz"] = {
            "train_batches": self.train_batches,
            "last_plot_epoch": self.last_plot_epoch,
            "generators": self._generator_states(),
            "loss_total": self._loss_total,
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        own = state.pop("latent_viz", None)
        if own is not None:
            self.train_batches = own["train_batches"]
            self.last_plot_epoch = own["last_plot_epoch"]
            self._loss_total = own.get("loss_total")
            states = own["generators"]
            if states is not None:
                # A run on another number of processes takes the states round-robin. clone():
                # Generator.set_state reads a row view from its storage's start (torch 2.x).
                self._generator = self._generator or torch.Generator()
                self._generator.set_state(states[distributed.rank() % len(states)].clone())
        self._graph = None
        super().load_state_dict(state)

    # ------------------------------------------------------------------ internals

    def _generator_states(self) -> Tensor | None:
        """Every rank's negative-sampling generator state, one row per rank (collective under
        DDP: every rank calls ``state_dict`` when a checkpoint is saved, rank 0 writes it)."""
        if self._generator is None:
            return None
        state = self._generator.get_state().unsqueeze(0)
        if not distributed.is_distributed():
            return state
        device = self._device or torch.device("cpu")  # NCCL gathers CUDA tensors only
        return distributed.gather_uneven(state.to(device)).cpu()

    def _log_epoch_loss(self, pl_module: LightningModule) -> None:
        """Log ``train/{name}_loss``, the mean of this epoch's update losses over every rank.

        Under DDP every rank joins one all-reduce per epoch, with or without updates; one
        host sync per epoch decides whether there was any update to log.
        """
        total, self._loss_total = self._loss_total, None
        if total is None:
            if not distributed.is_distributed():
                return
            total = torch.zeros(2)
        total = total.to(pl_module.device)
        distributed.all_reduce_mean([total])  # sums over ranks, up to a common factor
        if total[1] > 0:
            self.log_values(
                pl_module, {f"train/{self.name}_loss": total[0] / total[1]}, sync_dist=True
            )

    def _check_labels(self, labels: Any) -> None:
        """Refuse string labels before the queue tries to turn them into a tensor (no host
        sync: only Python objects are inspected)."""
        if isinstance(labels, Tensor):
            return
        kind = getattr(getattr(labels, "dtype", None), "kind", None)
        first = labels[0] if isinstance(labels, (list, tuple)) and labels else labels
        if isinstance(first, (str, bytes)) or kind in ("U", "S"):
            raise TypeError(
                f"{self.state_key}: target '{self.target}' holds strings (e.g. {first!r}), "
                "but the map is coloured by numeric labels; map each class name to an index "
                "(e.g. with a dict) in the dataset or the step"
            )

    def _check_folder(self, trainer: Trainer) -> None:
        """Create ``save_dir`` on rank 0 and fail on every rank when it cannot be written."""
        folder = self._folder(trainer)
        reason = unwritable_reason(folder) if trainer.is_global_zero else None
        failed = torch.tensor([float(reason is not None)], device=trainer.strategy.root_device)
        distributed.broadcast_([failed])
        if failed.item():
            raise ValueError(
                f"{self.state_key}: save_dir {folder!r} is not a folder rank 0 can write "
                f"to ({reason or 'see rank 0'}); pass another save_dir"
            )

    def _check_map(self, z: Tensor, n: int) -> None:
        if z.shape != (n, 2):
            raise ValueError(
                f"{self.state_key}: the projection must map {n} rows to shape ({n}, 2), "
                f"got {tuple(z.shape)}"
            )

    def _queue(self) -> OnlineQueue:
        if self._input_queue is None:
            raise RuntimeError(f"{self.state_key}: the queues are found when fit starts")
        return self._input_queue

    def _current_graph(self, trainer: Trainer) -> tuple[Tensor, Tensor | None] | None:
        """The rows to train on and their neighbour graph, rebuilt when enough rows are new.

        ``None`` while the queue is short (the same on every rank); a ``None`` graph when too
        few of this rank's rows are finite.
        """
        queue = self._queue()
        available = min(len(queue), self.queue_length)
        if available <= self.k_neighbors:
            self.info_once(
                trainer,
                "short-queue",
                f"the queue holds {available} rows, the neighbour graph needs more than "
                f"k_neighbors={self.k_neighbors}: the projection waits",
            )
            return None
        if self._graph is not None:
            built_at, rows, neighbors = self._graph
            if queue.appended - built_at < self.graph_refresh * available:
                return rows, neighbors
        rows = self.prepare_input(queue.read(self.queue_length))
        rows = rows.reshape(len(rows), -1)
        self.check_input_width(rows, self.input)
        finite = torch.isfinite(rows).all(dim=1)
        if not bool(finite.all()):  # one sync per rebuild
            rows = rows[finite]
            if self._non_finite_epoch != trainer.current_epoch:
                self._non_finite_epoch = trainer.current_epoch
                self.info(
                    f"rank {distributed.rank()}: left out {len(finite) - len(rows)} rows of "
                    f"'{self.input}' with non-finite values"
                )
        neighbors = None
        if len(rows) > self.k_neighbors:
            neighbors = neighbor_graph(rows, self.k_neighbors, metric=self.distance_metric)
        self._graph = (queue.appended, rows, neighbors)
        self.debug(f"rebuilt the neighbour graph of {len(rows)} rows")
        return rows, neighbors

    def _plot_due(self, trainer: Trainer) -> bool:
        epoch = trainer.current_epoch
        return (
            self._input_queue is not None
            and epoch >= self.warmup_epochs
            and epoch % self.plot_interval == 0
            and self.last_plot_epoch != epoch
        )

    def _gathered_rows(self) -> tuple[Tensor, Tensor | None]:
        """Every rank's queue rows (and labels), each once in rank order: the queues hold this
        rank's rows, this callback gathers them (collective: every rank calls it together)."""
        queues = [self._queue(), self._target_queue]
        if queues[1] is None:
            return distributed.gather_uneven(queues[0].read(self.queue_length)), None
        features, labels = read_aligned(queues, self.queue_length, self.state_key)
        return distributed.gather_uneven(features), distributed.gather_uneven(labels)

    def _folder(self, trainer: Trainer) -> str:
        if self.save_dir is not None:
            return os.fspath(self.save_dir)
        return os.path.join(trainer.default_root_dir, f"latent_viz_{self.name}")

    def _write(
        self,
        trainer: Trainer,
        epoch: int,
        z: Tensor,
        labels: Tensor | None,
        scores: dict[str, Tensor],
    ) -> None:
        folder = self._folder(trainer)
        os.makedirs(folder, exist_ok=True)
        stem = os.path.join(folder, f"epoch_{epoch:04d}")
        values = {key: float(v) for key, v in scores.items()}  # one sync per plot
        coordinates = z.cpu().numpy()
        classes = None
        if labels is not None:
            if labels.numel() == len(coordinates):
                classes = labels.reshape(-1).cpu().numpy()
            else:
                self.warn_once(
                    trainer, "labels", f"'{self.target}' is not one label per row: one colour"
                )
        plotting.save_map(stem + ".npz", coordinates, classes, epoch=epoch, **values)
        self._log_table(trainer, epoch, coordinates, classes)
        if not plotting.has_matplotlib():
            if not self._hinted_plot_extra:
                self._hinted_plot_extra = True
                self.info(f"saved {stem}.npz; {plotting.PLOT_EXTRA_HINT}")
            return
        k = self.k_neighbors
        title = (
            f"{self.name}, epoch {epoch}: trustworthiness@{k} {values['trustworthiness']:.3f}, "
            f"kNN recall@{k} {values['knn_recall']:.3f} ({len(coordinates)} points)"
        )
        figure = plotting.draw_map(coordinates, classes, title)
        plotting.save_figure(figure, stem + ".png")
        self.debug(f"saved {stem}.png")
        self._log_image(trainer, figure)

    def _log_image(self, trainer: Trainer, figure: Any) -> None:
        tag = f"eval/{self.name}_map"
        image = None
        for logger in trainer.loggers:
            try:
                if callable(getattr(logger, "log_image", None)):
                    image = plotting.figure_to_rgb(figure) if image is None else image
                    logger.log_image(key=tag, images=[image], step=trainer.global_step)
                    continue
                experiment = getattr(logger, "experiment", None)
                if callable(getattr(experiment, "add_image", None)):
                    image = plotting.figure_to_rgb(figure) if image is None else image
                    experiment.add_image(tag, image, trainer.global_step, dataformats="HWC")
            except Exception as error:  # a logger's failure must not stop training
                self.warn_once(
                    trainer, f"image-{type(logger).__name__}", f"could not log the map: {error!r}"
                )

    def _log_table(
        self, trainer: Trainer, epoch: int, coordinates: Any, classes: Any | None
    ) -> None:
        """Log the seed's W&B table of the map and the epoch to every ``WandbLogger``."""
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers:
            return
        import wandb

        columns, rows = plotting.table_data(coordinates, classes)
        for logger in loggers:
            try:
                logger.experiment.log(
                    {
                        f"{self.name}/2d_latent_table": wandb.Table(columns=columns, data=rows),
                        f"{self.name}/current_epoch": epoch,
                        "trainer/global_step": trainer.global_step,
                    }
                )
            except Exception as error:  # a logger's failure must not stop training
                self.warn_once(trainer, "wandb-table", f"could not log the table: {error!r}")
