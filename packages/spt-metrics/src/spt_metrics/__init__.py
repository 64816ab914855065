"""spt-metrics: a Lightning callback that feeds step outputs to any metric (functions wrapped
in ``FunctionMetric``), and label-free representation metrics (RankMe, effective rank,
alignment/uniformity, collapse, LiDAR)."""

from spt_metrics import functional as functional
from spt_metrics.__about__ import __version__
from spt_metrics.function_metric import FunctionMetric
from spt_metrics.metrics_callback import MetricsCallback
from spt_metrics.needs import Needs, resolve_needs
from spt_metrics.representation_metrics import (
    Alignment,
    DimsForEnergy,
    EffectiveRank,
    EmbeddingStd,
    LiDAR,
    MeanCosineSimilarity,
    RankMe,
    Uniformity,
)

__all__ = [
    "Alignment",
    "DimsForEnergy",
    "EffectiveRank",
    "EmbeddingStd",
    "FunctionMetric",
    "LiDAR",
    "MeanCosineSimilarity",
    "MetricsCallback",
    "Needs",
    "RankMe",
    "Uniformity",
    "__version__",
    "resolve_needs",
]
