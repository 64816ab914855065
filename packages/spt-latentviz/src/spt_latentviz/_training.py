"""The training half of LatentViz: its queues, the neighbour graph, the projection's updates
and what a checkpoint keeps of them."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from spt_core import distributed
from spt_latentviz._frames import MapFrames
from spt_latentviz._whitening import whiten
from spt_latentviz.functional import drop_non_finite, neighbour_graph, projection_loss
from spt_queue import OnlineQueue, find_or_create_queue, read_aligned
from spt_trainable import logger_writes_this_step


class MapTraining(MapFrames):
    """Trains :class:`~spt_latentviz.LatentViz`'s projection on this rank's queue rows.

    Each update reads the queue, rebuilds the neighbour graph when enough rows are new, and
    takes one optimizer step on :func:`~spt_latentviz.functional.projection_loss`. The
    negative-sampling generator and the epoch's loss total are per rank: :meth:`state_dict`
    holds this rank's, :meth:`gather_checkpoint_state` writes every rank's generator and the
    loss total's mean over the ranks.
    """

    graph_refresh: float = 0.1
    """Rebuild the neighbour graph once this fraction of the queue's rows is new."""
    reuse_whitening: bool = True
    """Keep the graph's rows whitened from one update to the next and whiten only the rows
    appended since (:class:`~spt_latentviz._whitening.WhitenedRows`); ``False`` whitens every
    row at every update in one matrix product. The two agree up to float rounding (a row can
    round differently in a product of another height)."""

    input: str
    target: str | None
    input_dim: Any
    queue_length: int
    k_neighbors: int
    n_negatives: int
    distance_metric: str
    train_batches: int
    last_plot_epoch: int | None
    _input_queue: OnlineQueue | None
    _target_queue: OnlineQueue | None
    _generator: torch.Generator | None
    _graph: tuple[int, Tensor, Tensor | None] | None
    _non_finite_epoch: int | None
    _loss_total: Tensor | None  # (sum of the update losses, updates) this epoch

    def _find_queues(self, trainer: Trainer) -> None:
        """Find (or create) the queues of ``input`` and ``target``; seed the generator."""
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

    def update_projection(self, trainer: Trainer, pl_module: LightningModule) -> Tensor | None:
        """One training step of the projection on this rank's queue (run every
        ``update_interval`` batches); every rank must call it together.

        Returns:
            The loss, or ``None`` when the queue holds too few rows yet.
        """
        graph = self._current_graph(trainer)
        if graph is None:
            return None
        rows, neighbours = graph
        self.agree_scaling(rows)
        with self.training_context() as projection:
            if neighbours is None:
                # Too few finite rows here: a zero gradient keeps the ranks' steps in lockstep.
                loss = sum(p.sum() for p in projection.parameters()) * 0.0
            else:
                loss = projection_loss(
                    lambda white: self.map_whitened(projection, white), self._whiten(rows),
                    neighbours, self.n_negatives, self._generator, owner=self.state_key,
                )  # fmt: skip
        self.backward_and_step(loss, trainer)
        loss = loss.detach()
        update = torch.stack((loss.float(), torch.ones_like(loss, dtype=torch.float32)))
        total = self._loss_total
        self._loss_total = update if total is None else total.to(update.device) + update
        if logger_writes_this_step(trainer):  # this rank's loss, as OnlineProbe logs its own
            pl_module.log(
                f"train/{self.name}_loss_step",
                loss,
                on_step=True,
                on_epoch=False,
                batch_size=len(rows),
            )
        return loss

    def state_dict(self) -> dict[str, Any]:
        """This rank's state; never communicates (see :meth:`gather_checkpoint_state`)."""
        state = super().state_dict()
        generator = None if self._generator is None else self._generator.get_state()
        state["latent_viz"] = {
            "train_batches": self.train_batches,
            "last_plot_epoch": self.last_plot_epoch,
            "generators": None if generator is None else generator.unsqueeze(0),
            "loss_total": self._loss_total,
            **self.frame_state(),
        }
        return state

    def gather_checkpoint_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint's values of every rank (collective under DDP: every rank saves the
        checkpoint together, each issuing the same two collectives).

        - ``generators``: every rank's negative-sampling generator state, one row per rank.
        - ``loss_total``: this epoch's (sum of the update losses, updates), as its mean over
          the ranks (a rank without an update counts zeros; ``None`` when no rank has one).
          Every rank restores it, so the ranks' totals again sum to the interrupted run's
          and ``train/{name}_loss`` after a mid-epoch resume is the uninterrupted run's.

        Every other value of ``latent_viz`` is already the same on every rank:
        ``train_batches`` (the ranks run the same training batches), ``last_plot_epoch``
        (every rank draws each map), the scaling (agreed by an all-reduce) and the frames
        (broadcast from rank 0). The projection and its optimizer are
        :class:`~spt_trainable.TrainableCallback`'s, whose ``gather_checkpoint_state`` runs
        first.
        """
        state = super().gather_checkpoint_state(state)
        own = state.get("latent_viz")
        if own is None or own["generators"] is None or not distributed.is_distributed():
            return state
        device = self._device or torch.device("cpu")  # NCCL reduces CUDA tensors only
        generators = distributed.gather_uneven(own["generators"].to(device)).cpu()
        total = own["loss_total"]
        total = torch.zeros(2, device=device) if total is None else total.to(device).clone()
        distributed.all_reduce_mean([total])
        total = total.cpu() if total[1] > 0 else None  # one host sync per checkpoint
        return {**state, "latent_viz": {**own, "generators": generators, "loss_total": total}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        own = state.pop("latent_viz", None)
        if own is not None:
            self.train_batches = own["train_batches"]
            self.last_plot_epoch = own["last_plot_epoch"]
            self._loss_total = own.get("loss_total")
            self.load_frame_state(own)
            states = own["generators"]
            if states is not None:
                # A run on another number of processes takes the states round-robin. clone():
                # Generator.set_state reads a row view from its storage's start (torch 2.x).
                self._generator = self._generator or torch.Generator()
                self._generator.set_state(states[distributed.rank() % len(states)].clone())
        self._graph = None
        self._whitened_rows.reset()
        super().load_state_dict(state)

    # ------------------------------------------------------------------ internals

    def _draw(
        self, trainer: Trainer, epoch: int, features: Tensor, labels: Tensor | None
    ) -> tuple[Tensor, Tensor | None] | None:
        """Fit the map of ``epoch`` to the finite rows of ``features`` during a fit (evaluating
        alone draws the learnt map); returns those rows and their labels, ``None`` when too
        few to score."""
        self.last_plot_epoch = epoch
        x = self.prepare_input(features)
        x, kept = drop_non_finite(x.reshape(len(x), -1))  # the same rows on every rank
        if kept is not None:
            labels = None if labels is None else labels[kept.to(labels.device)]
            self.warn_once(trainer, "non-finite-map", "rows with non-finite values are left out")
        n, k = len(x), self.k_neighbors
        if n <= 2 * k:
            self.info_once(
                trainer,
                "short-map",
                f"the queue holds {n} rows; scores at k={k} need more than {2 * k}: no map yet",
            )
            return None
        if trainer.state.fn == TrainerFn.FITTING:
            steps = self.refine_map(x, seed=epoch)
            self.debug(f"epoch {epoch}: the map of {n} rows took {steps} steps")
        return x, labels

    def _whiten(self, rows: Tensor) -> Tensor:
        """The graph's ``rows`` whitened by the current scaling."""
        if self.reuse_whitening:
            return self._whitened_rows.whiten(rows, self._scaling)
        return whiten(rows, self._scaling)

    def _log_epoch_loss(self, pl_module: LightningModule) -> None:
        """Log ``train/{name}_loss``, the mean of this epoch's update losses over every rank.

        Under DDP every rank joins one all-reduce per epoch, with or without updates; one
        host sync per epoch decides whether there was any update to log. The value is then
        the same on every rank: it is logged without Lightning's ``sync_dist`` (which would
        reduce it a second time).
        """
        total, self._loss_total = self._loss_total, None
        if total is None:
            if not distributed.is_distributed():
                return
            total = torch.zeros(2)
        total = total.to(pl_module.device)
        distributed.all_reduce_mean([total])  # sums over ranks, up to a common factor
        if total[1] > 0:
            self.log_values(pl_module, {f"train/{self.name}_loss": total[0] / total[1]})

    def _current_graph(self, trainer: Trainer) -> tuple[Tensor, Tensor | None] | None:
        """The rows to train on and their neighbour graph, rebuilt when enough rows are new.

        ``None`` while the queue is short (the same on every rank); a ``None`` graph when too
        few of this rank's rows are finite.
        """
        queue = self._input_queue
        if queue is None:
            raise RuntimeError(f"{self.state_key}: the queues are found when fit starts")
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
            built_at, rows, neighbours = self._graph
            if queue.appended - built_at < self.graph_refresh * available:
                return rows, neighbours
        rows = self.prepare_input(queue.read(self.queue_length))
        rows = rows.reshape(len(rows), -1)
        self.check_input_width(rows, self.input)
        rows, kept = drop_non_finite(rows)  # one sync per rebuild
        if kept is not None and self._non_finite_epoch != trainer.current_epoch:
            self._non_finite_epoch = trainer.current_epoch
            self.info(
                f"rank {distributed.rank()}: left out {len(kept) - len(rows)} rows of "
                f"'{self.input}' with non-finite values"
            )
        start = queue.appended - len(rows) if kept is None else None  # consecutive rows
        self._whitened_rows.place(rows, queue, start)
        neighbours = None
        if len(rows) > self.k_neighbors:
            neighbours = neighbour_graph(rows, self.k_neighbors, metric=self.distance_metric)
        self._graph = (queue.appended, rows, neighbours)
        self.debug(f"rebuilt the neighbour graph of {len(rows)} rows")
        return rows, neighbours

    def _gathered_rows(self) -> tuple[Tensor, Tensor | None]:
        """Every rank's queue rows (and labels), each once in rank order: the queues hold this
        rank's rows, this callback gathers them (collective: every rank calls it together)."""
        queue, labels = self._input_queue, self._target_queue
        if queue is None:
            raise RuntimeError(f"{self.state_key}: the queues are found when fit starts")
        if labels is None:
            return distributed.gather_uneven(queue.read(self.queue_length)), None
        features, labels = read_aligned([queue, labels], self.queue_length, self.state_key)
        return distributed.gather_uneven(features), distributed.gather_uneven(labels)
