"""spt-latentviz: a live, faithfulness-scored 2D map of the latent space while it trains."""

from spt_latentviz.__about__ import __version__
from spt_latentviz.alignment import align_map, alignment, feature_scaling
from spt_latentviz.animation import save_animation
from spt_latentviz.functional import (
    knn_recall,
    map_scores,
    neighbour_embedding_loss,
    neighbour_graph,
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
    "align_map",
    "alignment",
    "draw_map",
    "feature_scaling",
    "knn_recall",
    "load_map",
    "map_scores",
    "neighbour_embedding_loss",
    "neighbour_graph",
    "projection_loss",
    "projection_mlp",
    "sample_negatives",
    "save_animation",
    "save_map",
    "trustworthiness",
]
