"""A default projection network for LatentViz."""

from __future__ import annotations

from torch import nn

from spt_core.checks import positive_int

__all__ = ["projection_mlp"]


def projection_mlp(in_dim: int, hidden_dim: int = 128, depth: int = 2) -> nn.Sequential:
    """A ReLU MLP from ``in_dim`` features to 2, a good default ``projection``.

    Args:
        in_dim: Feature size.
        hidden_dim: Width of the hidden layers.
        depth: Number of hidden layers.

    Returns:
        ``depth`` pairs of ``Linear`` and ``ReLU``, then a ``Linear`` to 2 features.

    Raises:
        TypeError: If a size or ``depth`` is not an int.
        ValueError: If a size is below 1 or ``depth`` below 0.

    Example:
        >>> projection_mlp(64)
        Sequential(
          (0): Linear(in_features=64, out_features=128, bias=True)
          (1): ReLU()
          (2): Linear(in_features=128, out_features=128, bias=True)
          (3): ReLU()
          (4): Linear(in_features=128, out_features=2, bias=True)
        )
    """
    positive_int(in_dim, "in_dim")
    positive_int(hidden_dim, "hidden_dim")
    positive_int(depth, "depth", 0)
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(depth):
        layers += [nn.Linear(width, hidden_dim), nn.ReLU()]
        width = hidden_dim
    layers.append(nn.Linear(width, 2))
    return nn.Sequential(*layers)
