"""Label-free representation and collapse measures as pure functions of embeddings.

Each has a :mod:`torchmetrics` counterpart in :mod:`spt_metrics` (``rankme`` and
:class:`~spt_metrics.RankMe`, ...); see :mod:`spt_metrics.representation` for the formulas.
"""

from spt_metrics.representation import (
    alignment,
    dims_for_energy,
    effective_rank,
    embedding_std,
    lidar,
    mean_cosine_similarity,
    rankme,
    uniformity,
)

__all__ = [
    "alignment",
    "dims_for_energy",
    "effective_rank",
    "embedding_std",
    "lidar",
    "mean_cosine_similarity",
    "rankme",
    "uniformity",
]
