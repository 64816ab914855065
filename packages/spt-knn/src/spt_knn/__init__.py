"""spt-knn: online weighted kNN evaluation of a representation while it trains."""

from spt_knn.__about__ import __version__
from spt_knn.functional import WEIGHTINGS, knn_predict, weighted_vote
from spt_knn.online_knn import DISTRIBUTED_MODES, OnlineKNN
from spt_knn.sharded import merge_candidates, sharded_neighbours, sharded_neighbours_uneven

__all__ = [
    "DISTRIBUTED_MODES",
    "WEIGHTINGS",
    "OnlineKNN",
    "__version__",
    "knn_predict",
    "merge_candidates",
    "sharded_neighbours",
    "sharded_neighbours_uneven",
    "weighted_vote",
]
