"""spt-metrics: a Lightning callback that feeds step outputs to any metric."""

from spt_metrics.__about__ import __version__
from spt_metrics.metrics_callback import MetricsCallback
from spt_metrics.needs import Needs, resolve_needs

__all__ = ["MetricsCallback", "Needs", "__version__", "resolve_needs"]
