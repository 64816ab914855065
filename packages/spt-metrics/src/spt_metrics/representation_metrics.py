"""The measures of :mod:`spt_metrics.representation` as torchmetrics ``Metric`` classes.

Each Metric keeps the sums its function is computed from (see
:mod:`spt_metrics._representation_stats`) as fixed-shape float64/int64 states with
``dist_reduce_fx="sum"``, registered ``persistent=True``. So ``compute`` over several batches
equals the function over their concatenation; under DDP torchmetrics adds the ranks' sums (a
rank that saw no rows adds zeros, which is why ``num_features`` is given up front); and
``state_dict``/``load_state_dict`` carry a half-finished epoch through a checkpoint. Memory is
``O(num_features^2)`` whatever the number of rows, except :class:`Uniformity`, which needs pairs
and keeps a bounded buffer of rows. ``update`` never waits on the device; ``compute`` returns a
0-dim float64 tensor, ``nan`` when too few rows were seen (as the functions do). Every class
takes torchmetrics' ``Metric`` keyword arguments after its own; an argument of the wrong type
(or an ``update`` whose input is not real numbers) raises ``TypeError``, one out of range (or
an ``update`` whose input is not ``(N, num_features)``) raises ``ValueError``.

The two-view Metrics (:class:`Alignment`, :class:`Uniformity`, :class:`LiDAR`) live in
:mod:`spt_metrics.representation_view_metrics` and are re-exported here.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from spt_metrics import _representation_stats as stats
from spt_metrics.representation_view_metrics import Alignment, LiDAR, Uniformity

__all__ = [
    "Alignment",
    "DimsForEnergy",
    "EffectiveRank",
    "EmbeddingStd",
    "LiDAR",
    "MeanCosineSimilarity",
    "RankMe",
    "Uniformity",
]


class _GramSums(stats.SumStates):
    def __init__(self, num_features: int, **kwargs: Any) -> None:
        super().__init__(num_features, **kwargs)
        d = self.num_features
        self._sums(gram=(d, d), total=(d,), count=())

    def update(self, z: Tensor) -> None:
        """Add a batch of embeddings ``(N, num_features)``."""
        z = stats.rows(z, type(self).__name__, features=self.num_features)
        gram, total, count = stats.gram_stats(z)
        self._add(gram=gram, total=total, count=count)


class RankMe(_GramSums):
    """:func:`spt_metrics.representation.rankme` over every row since the last ``reset``.

    Exact, from the ``num_features x num_features`` Gram matrix summed in float64.

    Args:
        num_features: ``D``, the embedding width.
        eps: The paper's ``epsilon``.

    Example:
        >>> import torch
        >>> metric = RankMe(num_features=4)
        >>> for batch in torch.eye(4).split([1, 3]):
        ...     metric.update(batch)
        >>> metric.compute()
        tensor(4.0000, dtype=torch.float64)
    """

    def __init__(self, num_features: int, eps: float = 1e-7, **kwargs: Any) -> None:
        super().__init__(num_features, **kwargs)
        self.eps = stats.check_positive(eps, "eps", type(self).__name__, zero=True)

    def compute(self) -> Tensor:
        return stats.rankme_from_stats(self.gram, self.count, self.eps)


class EffectiveRank(_GramSums):
    """:func:`spt_metrics.representation.effective_rank` (of the covariance) over every row.

    Exact from the float64 Gram matrix and row sum (``Cov = (G - s s^T / N) / (N - 1)``); when
    the mean is very large compared with the spread, float64 cancellation limits the accuracy.

    Args:
        num_features: ``D``, the embedding width.

    Example:
        >>> import torch
        >>> metric = EffectiveRank(num_features=2)
        >>> metric.update(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        >>> metric.update(torch.tensor([[0.0, 1.0], [0.0, -1.0]]))
        >>> metric.compute()
        tensor(2.0000, dtype=torch.float64)
    """

    def compute(self) -> Tensor:
        return stats.effective_rank_from_stats(self.gram, self.total, self.count)


class DimsForEnergy(_GramSums):
    """:func:`spt_metrics.representation.dims_for_energy` over every row (exact).

    Args:
        num_features: ``D``, the embedding width.
        energy: The share of ``sum s_k^2`` to carry, in ``(0, 1]``.

    Example:
        >>> import torch
        >>> metric = DimsForEnergy(num_features=4, energy=0.8)
        >>> metric.update(torch.diag(torch.tensor([3.0, 1.0, 0.1, 0.0])))
        >>> metric.compute()
        tensor(0.2500, dtype=torch.float64)
    """

    def __init__(self, num_features: int, energy: float = 0.99, **kwargs: Any) -> None:
        super().__init__(num_features, **kwargs)
        self.energy = stats.check_energy(energy, type(self).__name__)

    def compute(self) -> Tensor:
        return stats.dims_for_energy_from_stats(self.gram, self.count, self.energy)


class _MomentSums(stats.SumStates):
    def __init__(self, num_features: int, **kwargs: Any) -> None:
        super().__init__(num_features, **kwargs)
        self._sums(total=(self.num_features,), squares=(self.num_features,), count=())

    def update(self, z: Tensor) -> None:
        """Add a batch of embeddings ``(N, num_features)``."""
        z = stats.rows(z, type(self).__name__, features=self.num_features)
        total, squares, count = stats.moment_stats(z)
        self._add(total=total, squares=squares, count=count)


class EmbeddingStd(_MomentSums):
    """:func:`spt_metrics.representation.embedding_std` from per-dimension float64 sums (exact).

    Args:
        num_features: ``D``, the embedding width.

    Example:
        >>> import torch
        >>> metric = EmbeddingStd(num_features=2)
        >>> metric.update(torch.tensor([[1.0, 0.0]]))
        >>> metric.update(torch.tensor([[-3.0, 0.0]]))
        >>> metric.compute()
        tensor(0.7071, dtype=torch.float64)
    """

    def compute(self) -> Tensor:
        return stats.embedding_std_from_stats(self.total, self.squares, self.count)


class MeanCosineSimilarity(_MomentSums):
    """:func:`spt_metrics.representation.mean_cosine_similarity` from float64 sums (exact).

    Args:
        num_features: ``D``, the embedding width.

    Example:
        >>> import torch
        >>> metric = MeanCosineSimilarity(num_features=2)
        >>> metric.update(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
        >>> metric.update(torch.tensor([[2.0, 0.0]]))
        >>> metric.compute()
        tensor(0.8047, dtype=torch.float64)
    """

    higher_is_better = False

    def compute(self) -> Tensor:
        return stats.mean_cosine_from_stats(self.total, self.squares, self.count)
