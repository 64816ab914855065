"""spt-embed: the clean features of a labelled loader, and when to compute them.

``embed_loader`` runs a loader through the model in eval mode, without gradients, and gives
back its features and labels (under DDP each rank embeds its share, every row once);
``gather_in_loader_order`` gives every rank all of them, in the loader's order;
``EvaluationSchedule`` says at which validations a periodic evaluation on those features is
due. The clean variants of spt-knn's ``OnlineKNN`` and spt-probe's ``OnlineProbe`` use both.
"""

from spt_embed.__about__ import __version__
from spt_embed.embedding import agree_features, embed_loader, gather_in_loader_order
from spt_embed.schedule import EvaluationSchedule

__all__ = [
    "EvaluationSchedule",
    "__version__",
    "agree_features",
    "embed_loader",
    "gather_in_loader_order",
]
