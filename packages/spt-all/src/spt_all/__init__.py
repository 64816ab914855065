"""spt-all: every spt package in one install; the callbacks and the main functions in one import.

``import spt_all as spt`` gives the callbacks and the functions a user calls most (the list
is ``spt.__all__``, documented in the README). Everything else stays in its package, which is
an attribute: ``spt.core``, ``spt.distance``, ``spt.queue``, ``spt.trainable``, ``spt.embed``,
``spt.knn``, ``spt.probe``, ``spt.latentviz``, ``spt.metrics`` (``spt.knn`` *is* ``spt_knn``).

Example:
    >>> import spt_all as spt
    >>> spt.OnlineKNN is spt.knn.OnlineKNN
    True
    >>> hasattr(spt, "lookup"), spt.core.lookup.__name__  # a helper stays in its package
    (False, 'lookup')
    >>> spt.metrics.RankMe.__name__  # so do the label-free metrics
    'RankMe'
    >>> sorted(spt.versions())[:2]
    ['spt-all', 'spt-core']
"""

from importlib import metadata

import spt_core as core
import spt_distance as distance
import spt_embed as embed
import spt_knn as knn
import spt_latentviz as latentviz
import spt_metrics as metrics
import spt_probe as probe
import spt_queue as queue
import spt_trainable as trainable
from spt_all.__about__ import __version__
from spt_core import SPTCallback, set_verbosity
from spt_distance import knn_search, pairwise_distances
from spt_knn import OnlineKNN, knn_predict
from spt_latentviz import LatentViz, projection_loss
from spt_metrics import MetricsCallback
from spt_probe import OnlineProbe, probe_step
from spt_queue import OnlineQueue, RingBuffer, find_or_create_queue
from spt_trainable import LARS, TrainableCallback

#: Every spt package, in dependency order (each is also an attribute: ``spt.knn``, ...).
PACKAGES = (core, distance, queue, trainable, embed, knn, probe, latentviz, metrics)


def versions() -> dict[str, str]:
    """The installed version of every spt package, keyed by distribution name.

    Returns:
        ``{"spt-all": ..., "spt-core": ..., ...}``: ``spt-all`` first, then :data:`PACKAGES`
        in dependency order.

    Raises:
        importlib.metadata.PackageNotFoundError: If a package is importable but not installed
            (run from a source tree without ``pip install -e``).

    Example:
        >>> found = versions()
        >>> list(found)[:3], found["spt-all"] == __version__
        (['spt-all', 'spt-core', 'spt-distance'], True)
    """
    names = ["spt-all", *(package.__name__.replace("_", "-") for package in PACKAGES)]
    return {name: metadata.version(name) for name in names}


__all__ = [
    "LARS",
    "LatentViz",
    "MetricsCallback",
    "OnlineKNN",
    "OnlineProbe",
    "OnlineQueue",
    "RingBuffer",
    "SPTCallback",
    "TrainableCallback",
    "__version__",
    "find_or_create_queue",
    "knn_predict",
    "knn_search",
    "pairwise_distances",
    "probe_step",
    "projection_loss",
    "set_verbosity",
    "versions",
]
