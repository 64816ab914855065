"""Label-free representation and collapse measures as pure functions of embeddings.

Each has a :mod:`torchmetrics` counterpart in :mod:`spt_metrics` (``rankme`` and
:class:`~spt_metrics.RankMe`, ...); see :mod:`spt_metrics.representation` for the formulas.
"""

from spt_metrics.representation import *  # noqa: F403
from spt_metrics.representation import __all__ as __all__
