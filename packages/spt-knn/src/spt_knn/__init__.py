"""spt-knn: online weighted kNN evaluation of a representation while it trains."""

from spt_knn.__about__ import __version__
from spt_knn._checks import DISTRIBUTED_MODES, WEIGHTINGS
from spt_knn.bank import KNNBank, knn_bank
from spt_knn.functional import knn_predict, weighted_vote
from spt_knn.online_knn import OnlineKNN
from spt_knn.search import knn_neighbours, merge_candidates
from spt_knn.sharded import RoundShape, agree_on_rounds, sharded_neighbours
from spt_knn.sweep import Sweep, parse_sweep

__all__ = [
    "DISTRIBUTED_MODES",
    "WEIGHTINGS",
    "KNNBank",
    "OnlineKNN",
    "RoundShape",
    "Sweep",
    "__version__",
    "agree_on_rounds",
    "knn_bank",
    "knn_neighbours",
    "knn_predict",
    "merge_candidates",
    "parse_sweep",
    "sharded_neighbours",
    "weighted_vote",
]
