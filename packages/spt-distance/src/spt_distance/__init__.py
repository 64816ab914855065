"""spt-distance: pairwise distances and exact streaming k-nearest-neighbour search."""

from spt_distance.__about__ import __version__
from spt_distance._checks import DEFAULT_MEMORY_BUDGET, METRICS
from spt_distance.knn import ChunkPlan, knn_search, plan_chunks
from spt_distance.pairwise import pairwise_distances

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "METRICS",
    "ChunkPlan",
    "__version__",
    "knn_search",
    "pairwise_distances",
    "plan_chunks",
]
