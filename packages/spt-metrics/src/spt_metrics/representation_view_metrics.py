"""The two-view measures of :mod:`spt_metrics.representation` as torchmetrics Metrics.

:class:`Alignment` and :class:`LiDAR` keep float64 sums (exact, ``dist_reduce_fx="sum"``);
:class:`Uniformity` needs pairs of rows, so it keeps a bounded buffer of the most recent rows
of each rank (``dist_reduce_fx="cat"``). See :mod:`spt_metrics.representation_metrics` for what
every Metric here shares (states, DDP, checkpoints, ``nan``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from spt_core.checks import positive_int
from spt_metrics._representation_stats import (
    SumStates,
    alignment_stats,
    check_positive,
    lidar_from_stats,
    lidar_stats,
    normalise,
    rows,
    same_shape,
    uniformity_from_rows,
    views_tensor,
)

__all__ = ["Alignment", "LiDAR", "Uniformity"]


class Alignment(SumStates):
    """:func:`spt_metrics.representation.alignment` of two views, as a running sum (exact).

    Args:
        alpha: The exponent (the paper's default 2).
        **kwargs: Passed to ``torchmetrics.Metric``.

    Raises:
        TypeError: For an argument of the wrong type, or an ``update`` whose views do not
            hold real numbers.
        ValueError: For an argument out of range, or an ``update`` whose views are not 2-D
            and equal in shape.

    Example:
        >>> import torch
        >>> metric = Alignment()
        >>> metric.update(torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0]]))
        >>> metric.update(torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]]))
        >>> metric.compute()
        tensor(1.0000, dtype=torch.float64)
    """

    higher_is_better = False

    def __init__(self, alpha: float = 2.0, **kwargs: Any) -> None:
        super().__init__(None, **kwargs)
        self.alpha = check_positive(alpha, "alpha", type(self).__name__)
        self._sums(total=(), count=())

    def update(self, z1: Tensor, z2: Tensor) -> None:
        """Add positive pairs: row ``i`` of ``z1`` and of ``z2`` are two views of one sample."""
        owner = type(self).__name__
        z1, z2 = same_shape(rows(z1, owner, "z1"), rows(z2, owner, "z2"), owner)
        total, count = alignment_stats(z1, z2, self.alpha)
        self._add(total=total, count=count)

    def compute(self) -> Tensor:
        return self.total / self.count if int(self.count) else self.total.new_tensor(float("nan"))


class Uniformity(SumStates):
    """:func:`spt_metrics.representation.uniformity` over a bounded sample: the most recent rows.

    Uniformity needs every pair of rows, so each rank keeps the l2-normalised rows of its most
    recent ``max_rows`` rows (per view, in float32) in a ring buffer; ``compute`` takes every
    pair of distinct rows among all ranks' buffers. The value is exact while each rank has seen
    at most ``max_rows`` rows since the last ``reset``. Pass ``z2`` at every ``update`` or never.
    A state synchronised across ranks and loaded back into one rank (as ``MetricsCallback``
    does for an open window when it resumes) keeps the other ranks' buffers as they were and
    adds its new rows to its own.

    Args:
        num_features: ``D``, the embedding width.
        max_rows: Rows kept per rank and per view.
        t: The paper's ``t`` (default 2).
        **kwargs: Passed to ``torchmetrics.Metric``.

    Raises:
        TypeError: For an argument of the wrong type, or an ``update`` whose views do not
            hold real numbers.
        ValueError: For an argument out of range, or an ``update`` whose views are not
            ``(N, D)`` and equal in shape.

    Example:
        >>> import torch
        >>> metric = Uniformity(num_features=2, max_rows=2)
        >>> metric.update(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
        >>> metric.update(torch.tensor([[-1.0, 0.0]]))  # replaces the oldest row
        >>> metric.compute()
        tensor(-8.0000, dtype=torch.float64)
    """

    higher_is_better = False
    full_state_update = True  # the buffers cannot be merged by addition

    def __init__(
        self, num_features: int, max_rows: int = 1024, t: float = 2.0, **kwargs: Any
    ) -> None:
        super().__init__(num_features, **kwargs)
        self.max_rows = positive_int(max_rows, "Uniformity: max_rows", 2)
        self.t = check_positive(t, "t", type(self).__name__)
        for view in ("1", "2"):
            buffer = torch.zeros(1, max_rows, num_features)  # one ring buffer: this rank's
            self.add_state(f"rows{view}", buffer, dist_reduce_fx="cat", persistent=True)
            written = torch.zeros(1, dtype=torch.int64)
            self.add_state(f"written{view}", written, dist_reduce_fx="cat", persistent=True)

    def update(self, z1: Tensor, z2: Tensor | None = None) -> None:
        """Add rows ``(N, num_features)`` of one view, and optionally of a second view."""
        owner = type(self).__name__
        z1 = rows(z1, owner, "z1", self.num_features)
        if z2 is not None:
            z1, z2 = same_shape(z1, rows(z2, owner, "z2", self.num_features), owner)
            self.rows2, self.written2 = self._push(self.rows2, self.written2, z2)
        self.rows1, self.written1 = self._push(self.rows1, self.written1, z1)

    def _push(self, buffer: Tensor, written: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        # Rows go to the slots after the last written one, wrapping around: the ring buffer
        # always holds the most recent rows (a batch longer than it keeps its tail). Buffers
        # after the first come from a loaded synchronised state and are left as they are.
        buffer = buffer.reshape(-1, self.max_rows, self.num_features)
        written = written.reshape(-1)
        kept = normalise(z[-self.max_rows :]).to(buffer.dtype)
        slots = (written[0] + torch.arange(len(kept), device=buffer.device)) % self.max_rows
        buffer[0].index_copy_(0, slots, kept)
        return buffer, torch.cat([written[:1] + len(kept), written[1:]])

    def compute(self) -> Tensor:
        first = self._view(self.rows1, self.written1)
        if int(self.written2.sum()) == 0:
            return first
        return (first + self._view(self.rows2, self.written2)) / 2

    def _view(self, buffer: Tensor, written: Tensor) -> Tensor:
        # After a DDP sync the states hold every rank's buffers and counts, stacked.
        slots = torch.arange(self.max_rows, device=buffer.device)
        filled = slots < written.reshape(-1, 1)
        units = buffer.reshape(-1, self.num_features)
        return uniformity_from_rows(units, filled.reshape(-1), self.t)


class LiDAR(SumStates):
    """:func:`spt_metrics.representation.lidar` from per-sample float64 sums (exact).

    Every sample's views must come in the same ``update`` (a view axis, or one tensor per view
    with row ``i`` the same sample in each); the between-sample and within-sample scatters are
    summed as ``O(num_features^2)`` states.

    Args:
        num_features: ``D``, the embedding width.
        delta: The within-class regularisation ``delta`` (1e-4 by default).
        eps: The ``eps`` added to each ``p_k`` (1e-8 by default).
        **kwargs: Passed to ``torchmetrics.Metric``.

    Raises:
        TypeError: For an argument of the wrong type, or views that do not hold real numbers.
        ValueError: For an argument out of range, or views that are not ``(n, q >= 2, D)`` or
            several equal ``(n, D)``.

    Example:
        >>> import torch
        >>> first = torch.tensor([[4.0, 0.0], [-4.0, 0.0], [0.0, 4.0], [0.0, -4.0]])
        >>> metric = LiDAR(num_features=2)
        >>> metric.update(first[:3], 1.1 * first[:3])
        >>> metric.update(torch.stack([first[3:], 1.1 * first[3:]], dim=1))
        >>> metric.compute()
        tensor(2.0000, dtype=torch.float64)
    """

    def __init__(
        self, num_features: int, delta: float = 1e-4, eps: float = 1e-8, **kwargs: Any
    ) -> None:
        super().__init__(num_features, **kwargs)
        self.delta = check_positive(delta, "delta", type(self).__name__)
        self.eps = check_positive(eps, "eps", type(self).__name__, zero=True)
        d = self.num_features
        self._sums(count=(), total=(d,), gram=(d, d), within=(d, d), dof=())

    def update(self, views: Tensor, *more_views: Tensor) -> None:
        """Add samples: ``(n, q, D)``, or ``q >= 2`` tensors ``(n, D)``, one per view."""
        views = views_tensor(views, more_views, type(self).__name__, self.num_features)
        count, total, gram, within, dof = lidar_stats(views)
        self._add(count=count, total=total, gram=gram, within=within, dof=dof)

    def compute(self) -> Tensor:
        stats = (self.count, self.total, self.gram, self.within, self.dof)
        return lidar_from_stats(*stats, self.delta, self.eps)
