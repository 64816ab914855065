"""LatentViz's frames: the map function, the steps it takes when a map is drawn, and the
alignment of each frame to the previous one."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from spt_core import distributed
from spt_latentviz._checks import check_map
from spt_latentviz._graph import neighbour_graph
from spt_latentviz._whitening import WhitenedRows, whiten
from spt_latentviz.alignment import (
    align_map,
    alignment,
    feature_scaling,
    principal_components,
    scaling_from_sums,
)
from spt_latentviz.functional import neighbour_embedding_loss, sample_negatives
from spt_trainable import TrainableCallback


class MapFrames(TrainableCallback):
    """The map of :class:`~spt_latentviz.LatentViz`: ``features -> 2D`` and its frames.

    The map is ``map_gain * projection((x - centre) @ transform)`` (the features whitened,
    :func:`~spt_latentviz.alignment.feature_scaling`), then the frame's rotation or
    reflection and shift. When a map is drawn, :meth:`refine_map` fits the map to the drawn
    rows (their points first, then the projection to them) and aligns the new frame to the
    previous one. The drawn rows are whitened once per scaling, not at every step.
    """

    whitening_floor: float = 0.1
    """Feature directions are whitened down to this fraction of the largest deviation
    (:func:`~spt_latentviz.alignment.feature_scaling`)."""
    map_gain: float = 10.0
    """Coordinates are this multiple of the projection's output: a fresh projection's points
    lie about 0.1 apart, too close for the Student-t kernel (measured on digits embeddings)."""
    refine_point_lr: float = 0.3
    """Adam rate of the map's points when a map is drawn (map units), decayed linearly to 0
    over ``refine_point_steps`` (as UMAP decays its rate)."""
    refine_lr: float = 3e-2
    """AdamW rate of the projection when a map is drawn (measured on digits embeddings: 1e-2
    needs 300 steps to draw the points as faithfully as 3e-2 does in 200)."""
    refine_window: int = 20
    """The projection's loss is compared as the mean over windows of this many steps."""
    refine_patience: int = 2
    """Stop after this many windows without a relative improvement of ``refine_tolerance``."""
    refine_tolerance: float = 1e-3
    refine_point_steps: int = 300
    """Steps of the map's points per map (5 ms each for 1797 rows on one CPU thread). Measured
    on digits embeddings from a PCA start: 200 steps come within 0.01 of UMAP's
    trustworthiness@15, 300 within 0.005."""
    refine_max_steps: int = 200
    """At most this many steps of the projection per map (8 ms each for 1797 rows and
    ``projection_mlp(128)`` on one CPU thread)."""

    input: str
    k_neighbors: int
    n_negatives: int
    distance_metric: str
    _scaling: tuple[Tensor, Tensor] | None
    _alignment: tuple[Tensor, Tensor] | None
    _frame_module: dict[str, Tensor] | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._whitened_rows = WhitenedRows()  # the training rows, whitened; never checkpointed

    def map_rows(self, module: nn.Module, rows: Tensor) -> Tensor:
        """The map of ``rows`` before the frame's alignment (differentiable)."""
        return self.map_whitened(module, whiten(rows, self._scaling))

    def map_whitened(self, module: nn.Module, white: Tensor) -> Tensor:
        """:meth:`map_rows` of rows already whitened by the current scaling."""
        return self.map_gain * module(white)

    def project(self, features: Tensor) -> Tensor:
        """Map ``features`` (``(N, ...)``, flattened to ``(N, D)``) to ``(N, 2)`` fp32 points,
        in the coordinates of the last frame drawn."""
        x = self.prepare_input(features).reshape(len(features), -1)
        self.check_input_width(x, self.input)
        with self.evaluation_context() as projection:
            z = self.map_rows(projection, x)
        check_map(z, len(x), self.state_key)
        return self._aligned(z.float())

    def agree_scaling(self, rows: Tensor) -> None:
        """Set the feature scaling from every rank's ``rows`` if none is set yet (the first
        update: one collective, every rank calls it together)."""
        if self._scaling is not None:
            return
        rows = rows.double()
        sums = [rows.sum(dim=0), rows.T @ rows, torch.tensor(float(len(rows)), device=rows.device)]
        distributed.all_reduce_mean(sums)  # the common factor cancels out
        self._scaling = scaling_from_sums(*sums, floor=self.whitening_floor)
        self._whitened_rows.clear()

    def refine_map(self, rows: Tensor, seed: int) -> int:
        """Fit the map to ``rows`` (every rank's gathered rows, the same on every rank) and
        align the new frame to the previous one; returns the number of steps taken.

        Two phases. First the map's points move along the neighbour-embedding loss for
        ``refine_point_steps`` Adam steps (rate ``refine_point_lr`` decayed linearly to 0;
        negatives drawn from a generator seeded with ``seed``), from the start with the lower
        loss: the rows' two principal components or where the current projection puts them.
        Then the projection learns to draw those points (squared error), until the mean loss of
        ``refine_window`` steps has not improved by ``refine_tolerance`` (relative) for
        ``refine_patience`` windows, or after ``refine_max_steps``. Rank 0's result is
        broadcast (one collective), so every rank holds the same map.
        """
        reference = before = None
        if self._frame_module is not None:
            with self.evaluation_context():
                before = whiten(rows, self._scaling)  # by the previous frame's scaling
            reference = self._previous_frame(self._frame_module, before)
        starts = [principal_components(rows).float() * self.map_gain]
        if before is not None:
            with self.evaluation_context() as projection:
                starts.append(self.map_whitened(projection, before).float())
        self._scaling = feature_scaling(rows.double(), self.whitening_floor)
        points, moved = self._move_points(rows, starts, seed)
        with self.evaluation_context() as projection:
            white = whiten(rows, self._scaling)
            drawn = self.map_whitened(projection, white).float()
        # The loss ignores rotations: the projection learns the turn of the points nearest
        # to what it draws now.
        fitted = self._fit_projection(white, align_map(points, drawn))
        with self.evaluation_context() as projection:
            z = self.map_whitened(projection, white).float()
        if reference is None:
            rotation, shift = torch.eye(2, device=z.device), -z.mean(dim=0)
        else:
            rotation, shift = alignment(z, reference)
        self._alignment = (rotation, shift)
        state = self.module.state_dict()
        distributed.broadcast_([*state.values(), *self._scaling, *self._alignment])
        self._whitened_rows.clear()  # the broadcast may have changed the scaling in place
        self._frame_module = {key: value.detach().clone() for key, value in state.items()}
        return moved + fitted

    def frame_state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the frames (this rank's, the same on every rank)."""
        return {
            "scaling": self._scaling,
            "alignment": self._alignment,
            "frame_module": self._frame_module,
        }

    def load_frame_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`frame_state` kept (absent keys: none yet)."""
        self._scaling = state.get("scaling")
        self._alignment = state.get("alignment")
        self._frame_module = state.get("frame_module")
        self._whitened_rows.clear()

    # ------------------------------------------------------------------ internals

    def _aligned(self, z: Tensor) -> Tensor:
        if self._alignment is None:
            return z
        rotation, shift = (t.to(z.device, z.dtype) for t in self._alignment)
        return z @ rotation + shift

    def _previous_frame(self, frame_module: dict[str, Tensor], white: Tensor) -> Tensor:
        """The last frame's map (its projection ``frame_module`` and alignment) of rows
        whitened by its scaling."""
        module = self.module
        current = {key: v.detach().clone() for key, v in module.state_dict().items()}
        module.load_state_dict(frame_module)
        try:
            with self.evaluation_context() as projection:
                return self._aligned(self.map_whitened(projection, white).float())
        finally:
            module.load_state_dict(current)

    def _until_stalled(self, step: Any, max_steps: int) -> int:
        """Call ``step()`` (it returns the step's loss) until the loss stalls or ``max_steps``;
        the steps taken."""
        best, stale, steps = float("inf"), 0, 0
        window: Tensor | float = 0.0
        while steps < max_steps and stale < self.refine_patience:
            window = window + step()
            steps += 1
            if steps % self.refine_window == 0:
                mean = float(window) / self.refine_window  # one host sync per window
                window = 0.0
                improved = mean < best * (1.0 - self.refine_tolerance)  # losses are >= 0
                best, stale = (mean, 0) if improved else (best, stale + 1)
        return steps

    def _move_points(self, rows: Tensor, starts: list[Tensor], seed: int) -> tuple[Tensor, int]:
        """The map's points moved along the neighbour-embedding loss from the start of
        ``starts`` with the lowest loss (the same negatives for each)."""
        if len(rows) <= self.k_neighbors:
            return starts[-1], 0
        neighbours = neighbour_graph(rows, self.k_neighbors, metric=self.distance_metric)
        generator = torch.Generator().manual_seed(seed)
        negatives = sample_negatives(len(rows), neighbours, self.n_negatives, generator)
        losses = torch.stack([neighbour_embedding_loss(z, neighbours, negatives) for z in starts])
        points = starts[int(losses.argmin())].detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([points], lr=self.refine_point_lr)
        steps = self.refine_point_steps
        with torch.enable_grad():
            for step in range(steps):
                optimizer.param_groups[0]["lr"] = self.refine_point_lr * (1.0 - step / steps)
                negatives = sample_negatives(len(rows), neighbours, self.n_negatives, generator)
                loss = neighbour_embedding_loss(points, neighbours, negatives)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return points.detach(), steps

    def _fit_projection(self, white: Tensor, points: Tensor) -> int:
        """Train the projection to draw ``points`` from the whitened rows ``white`` (squared
        error); the steps taken."""
        parameters = self._parameters()
        pending = [p.grad for p in parameters]  # an unfinished accumulation window
        optimizer = torch.optim.AdamW(parameters, lr=self.refine_lr, weight_decay=1e-2)
        with self.training_context() as projection:

            def step() -> Tensor:
                z = self.map_whitened(projection, white)
                check_map(z, len(white), self.state_key)
                loss = (z.float() - points).square().sum(dim=1).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                return loss.detach()

            steps = self._until_stalled(step, self.refine_max_steps)
        for p, grad in zip(parameters, pending, strict=True):
            p.grad = grad
        return steps
