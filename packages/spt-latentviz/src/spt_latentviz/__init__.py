"""spt-latentviz: a live, faithfulness-scored 2D map of the latent space while it trains."""

from spt_latentviz.__about__ import __version__
from spt_latentviz.functional import (
    knn_recall,
    map_scores,
    neighbor_embedding_loss,
    neighbor_graph,
    projection_loss,
    sample_negatives,
    trustworthiness,
)
from spt_latentviz.latent_viz import DEFAULT_LR, LatentViz
from spt_latentviz.plotting import draw_map, load_map, save_map
from spt_latentviz.projection import projection_mlp

__all__ = [
    "DEFAULT_LR",
    "LatentViz",
    "__version__",
    "draw_map",
    "knn_recall",
    "load_map",
    "map_scores",
    "neighbor_embedding_loss",
    "neighbor_graph",
    "projection_loss",
    "projection_mlp",
    "sample_negatives",
    "save_map",
    "trustworthiness",
]
