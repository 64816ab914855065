"""Saving and drawing 2D maps: ``.npz`` files always, pictures when matplotlib is installed.

Figures are built with ``matplotlib.figure.Figure`` and rendered with the Agg canvas, so
nothing here touches pyplot or the user's global backend.
"""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from spt_latentviz._map_checks import (
    check_figure,
    check_scalars,
    checked_coordinates,
    checked_labels,
    checked_path,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "PLOT_EXTRA_HINT",
    "draw_map",
    "figure_to_rgb",
    "has_matplotlib",
    "load_map",
    "save_figure",
    "save_map",
    "table_data",
]

PLOT_EXTRA_HINT = "pip install 'spt-latentviz[plot]' (matplotlib) to get pictures"
# At most this many classes get a legend entry each; more get a colour bar.
_MAX_LEGEND_CLASSES = 20


def has_matplotlib() -> bool:
    """Whether matplotlib can be imported (the ``[plot]`` extra).

    Example:
        >>> isinstance(has_matplotlib(), bool)
        True
    """
    return importlib.util.find_spec("matplotlib") is not None


def save_map(
    path: str | os.PathLike[str],
    coordinates: np.ndarray,
    labels: np.ndarray | None = None,
    **scalars: float,
) -> None:
    """Write a map to a compressed ``.npz``: ``coordinates``, ``labels`` when given, scalars.

    Args:
        path: Destination file (its folder must exist).
        coordinates: Shape ``(N, 2)``.
        labels: Shape ``(N,)`` or ``None``.
        **scalars: Extra numbers stored as 0-d arrays (epoch, scores...).

    Raises:
        TypeError: If ``path`` is not a str or a path, ``coordinates`` not numbers, ``labels``
            neither numbers nor strings, or a scalar not a number.
        ValueError: If the shapes do not fit or a scalar holds several numbers.
        OSError: If the file cannot be written (e.g. its folder does not exist).

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "map.npz")
        >>> save_map(path, np.zeros((3, 2)), np.array([0, 1, 1]), epoch=4)
        >>> sorted(load_map(path))
        ['coordinates', 'epoch', 'labels']
    """
    checked_path(path, "path")
    coordinates = checked_coordinates(coordinates)
    labels = checked_labels(labels, len(coordinates))
    check_scalars(scalars)
    arrays: dict[str, Any] = {"coordinates": coordinates}
    if labels is not None:
        arrays["labels"] = labels
    arrays.update({key: np.asarray(value) for key, value in scalars.items()})
    np.savez_compressed(path, **arrays)


def load_map(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a file written by :func:`save_map` into a dict of arrays.

    Args:
        path: The ``.npz`` file.

    Returns:
        ``{"coordinates": (N, 2), "labels": (N,) when saved, and each scalar as a 0-d array}``.

    Raises:
        TypeError: If ``path`` is not a str or a path.
        OSError: If the file cannot be read.

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "map.npz")
        >>> save_map(path, np.array([[0.5, 1.0], [2.0, 3.0]]), epoch=7)
        >>> saved = load_map(path)
        >>> saved["coordinates"].tolist(), int(saved["epoch"]), "labels" in saved
        ([[0.5, 1.0], [2.0, 3.0]], 7, False)
    """
    checked_path(path, "path")
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def table_data(
    coordinates: np.ndarray, labels: np.ndarray | None = None
) -> tuple[list[str], list[list[Any]]]:
    """The columns and rows of a map as a table: ``x, y`` and ``class`` when labels are given.

    Integer labels stay Python ints, other labels keep their value.

    Example:
        >>> table_data(np.array([[0.5, 1.0], [2.0, 3.0]]), np.array([1, 0]))
        (['x', 'y', 'class'], [[0.5, 1.0, 1], [2.0, 3.0, 0]])
        >>> table_data(np.zeros((1, 2)))
        (['x', 'y'], [[0.0, 0.0]])
    """
    rows = np.asarray(coordinates, dtype=np.float64).tolist()
    if labels is None:
        return ["x", "y"], rows
    classes = np.asarray(labels).reshape(-1).tolist()
    return ["x", "y", "class"], [[x, y, c] for (x, y), c in zip(rows, classes, strict=True)]


def _class_colours(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, Any]:
    """Unique classes, each point's class index, and the colour map to use (a discrete one,
    indexed by class index, up to 20 classes; a continuous one beyond)."""
    from matplotlib import colormaps

    classes, index = np.unique(labels, return_inverse=True)
    if len(classes) <= 10:
        cmap = colormaps["tab10"]
    elif len(classes) <= _MAX_LEGEND_CLASSES:
        cmap = colormaps["tab20"]
    else:
        cmap = colormaps["turbo"]
    return classes, index, cmap


def draw_map(
    coordinates: np.ndarray,
    labels: np.ndarray | None = None,
    title: str = "",
    size: tuple[float, float] = (7.0, 6.0),
    dpi: int = 100,
    limits: tuple[float, float, float, float] | None = None,
) -> Figure:
    """A scatter plot of a 2D map, coloured by class.

    Up to 20 classes get distinct colours (``tab10`` / ``tab20``) and a legend; more classes
    get a continuous colour map (``turbo``) with a colour bar. Without labels every point
    has one colour. Points are drawn in a shuffled order so no class hides another.

    Args:
        coordinates: Shape ``(N, 2)``.
        labels: Shape ``(N,)`` or ``None``.
        title: Figure title.
        size: Figure size in inches; the picture is ``size * dpi`` pixels.
        dpi: Dots per inch.
        limits: ``(x_min, x_max, y_min, y_max)`` of the axes (the frames of an animation
            share them); ``None``: fitted to the points.

    Returns:
        A ``matplotlib.figure.Figure`` (not registered with pyplot).

    Raises:
        TypeError: If ``coordinates`` are not numbers, ``labels`` neither numbers nor strings,
            ``title`` not a str, ``size`` or ``limits`` not a tuple of numbers, ``dpi`` not an
            int.
        ValueError: If the shapes do not fit, a size or ``dpi`` is not positive, or
            ``limits`` are not finite with ``x_min < x_max`` and ``y_min < y_max``.
        ImportError: Without matplotlib (see :data:`PLOT_EXTRA_HINT`).

    Example:
        >>> fig = draw_map(np.random.rand(50, 2), np.arange(50) % 3, title="demo")
        >>> fig.get_size_inches().tolist(), len(fig.axes[0].get_legend().get_texts())
        ([7.0, 6.0], 3)
    """
    coordinates = checked_coordinates(coordinates).astype(np.float64)
    labels = checked_labels(labels, len(coordinates))
    check_figure(title, size, dpi, limits)
    if not has_matplotlib():
        raise ImportError(f"drawing a map needs matplotlib: {PLOT_EXTRA_HINT}")
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    n = len(coordinates)
    fig = Figure(figsize=size, dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    order = np.random.default_rng(0).permutation(n)
    point_size = float(np.clip(8000.0 / max(n, 1), 1.0, 20.0))
    style = {"s": point_size, "alpha": 0.8, "linewidths": 0}
    if labels is None:
        ax.scatter(coordinates[order, 0], coordinates[order, 1], color="tab:blue", **style)
    else:
        classes, index, cmap = _class_colours(labels)
        if len(classes) > _MAX_LEGEND_CLASSES:
            values = labels if np.issubdtype(labels.dtype, np.number) else index
            norm = Normalize(float(values.min()), float(values.max()))
            ax.scatter(
                coordinates[order, 0], coordinates[order, 1], c=cmap(norm(values[order])), **style
            )
            mappable = ScalarMappable(norm=norm, cmap=cmap)
            fig.colorbar(mappable, ax=ax, label=f"class ({len(classes)} classes)")
        else:
            ax.scatter(coordinates[order, 0], coordinates[order, 1], c=cmap(index[order]), **style)
            handles = [
                Line2D([], [], marker="o", linestyle="", color=cmap(i), label=str(c))
                for i, c in enumerate(classes)
            ]
            ax.legend(
                handles=handles,
                title="class",
                loc="center left",
                bbox_to_anchor=(1.0, 0.5),
                fontsize="small",
                frameon=False,
            )
    if limits is None:
        ax.set_aspect("equal", adjustable="datalim")
    else:
        ax.set_xlim(limits[0], limits[1])
        ax.set_ylim(limits[2], limits[3])
        ax.set_aspect("equal", adjustable="box")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize="medium")
    return fig


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> None:
    """Write ``fig`` as a PNG of exactly ``size * dpi`` pixels (Agg, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=fig.dpi)


def figure_to_rgb(fig: Figure) -> np.ndarray:
    """Render ``fig`` to an ``(H, W, 3)`` uint8 array (what image loggers take).

    Example:
        >>> figure_to_rgb(draw_map(np.random.rand(5, 2), size=(2.0, 1.0), dpi=50)).shape
        (50, 100, 3)
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
