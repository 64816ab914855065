"""spt-all: every spt package in one import.

Example:
    >>> import spt_all as spt
    >>> sorted(spt.versions())[:2]
    ['spt-all', 'spt-core']
"""

from importlib import metadata

import spt_core
import spt_distance
import spt_knn
import spt_latentviz
import spt_metrics
import spt_probe
import spt_queue
import spt_trainable
from spt_all import __about__
from spt_core import *  # noqa: F403
from spt_distance import *  # noqa: F403
from spt_knn import *  # noqa: F403
from spt_latentviz import *  # noqa: F403
from spt_metrics import *  # noqa: F403
from spt_probe import *  # noqa: F403
from spt_queue import *  # noqa: F403
from spt_trainable import *  # noqa: F403

PACKAGES = (
    spt_core,
    spt_distance,
    spt_queue,
    spt_trainable,
    spt_knn,
    spt_probe,
    spt_latentviz,
    spt_metrics,
)

# After the star imports, which bring each package's own ``__version__``.
__version__ = __about__.__version__


def versions() -> dict[str, str]:
    """The installed version of every spt package, keyed by distribution name."""
    names = ["spt-all", *(package.__name__.replace("_", "-") for package in PACKAGES)]
    return {name: metadata.version(name) for name in names}


__all__ = sorted(
    {name for package in PACKAGES for name in package.__all__ if name != "__version__"}
    | {"__version__", "versions"}
)
