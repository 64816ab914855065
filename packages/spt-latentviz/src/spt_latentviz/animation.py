"""An animated GIF of a run's maps: every saved frame, drawn on the same axes."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from spt_latentviz._checks import positive_number
from spt_latentviz._map_checks import checked_frames, checked_path
from spt_latentviz.plotting import (
    PLOT_EXTRA_HINT,
    draw_map,
    figure_to_rgb,
    has_matplotlib,
    load_map,
)

__all__ = ["save_animation"]


def save_animation(
    frames: Sequence[str | os.PathLike[str]],
    path: str | os.PathLike[str],
    name: str = "map",
    seconds_per_frame: float = 0.8,
) -> int:
    """Write the maps saved in ``frames`` (``.npz`` files of :func:`~spt_latentviz.save_map`,
    in order) as an animated GIF, every frame on the same axes so that motion shows.

    Frames are drawn with :func:`~spt_latentviz.draw_map` (matplotlib, Agg) and written by
    Pillow (a matplotlib dependency). The title says the frame's ``epoch`` and scores when
    the file holds them.

    Args:
        frames: The ``.npz`` files, first frame first.
        path: The ``.gif`` to write (its folder must exist).
        name: The map's name, in each title.
        seconds_per_frame: How long each frame shows.

    Returns:
        The number of frames written.

    Raises:
        TypeError: If ``frames`` is not a list of paths, ``path`` not a path, ``name`` not a
            str or ``seconds_per_frame`` not a number.
        ValueError: If ``frames`` is empty or ``seconds_per_frame`` not a finite number
            ``> 0``.
        ImportError: Without matplotlib (see :data:`~spt_latentviz.plotting.PLOT_EXTRA_HINT`).

    Example:
        >>> import tempfile
        >>> from spt_latentviz import save_map
        >>> folder = tempfile.mkdtemp()
        >>> paths = [os.path.join(folder, f"epoch_{e}.npz") for e in range(3)]
        >>> for e, p in enumerate(paths):
        ...     save_map(p, np.random.rand(20, 2) + e, np.arange(20) % 2, epoch=e)
        >>> save_animation(paths, os.path.join(folder, "maps.gif"))
        3
    """
    frames = checked_frames(frames)
    checked_path(path, "path")
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {name!r}")
    positive_number(seconds_per_frame, "seconds_per_frame")
    if not has_matplotlib():
        raise ImportError(f"an animation needs matplotlib: {PLOT_EXTRA_HINT}")
    from PIL import Image

    maps = [load_map(frame) for frame in frames]
    points = np.concatenate([m["coordinates"] for m in maps])
    low, high = points.min(axis=0), points.max(axis=0)
    centre, half = (low + high) / 2, float((high - low).max()) / 2 * 1.05 or 1.0
    limits = (centre[0] - half, centre[0] + half, centre[1] - half, centre[1] + half)
    images = []
    for m in maps:
        figure = draw_map(m["coordinates"], m.get("labels"), _title(name, m), limits=limits)
        images.append(Image.fromarray(figure_to_rgb(figure)))
    images[0].save(
        path,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=int(seconds_per_frame * 1000),
        loop=0,
    )
    return len(images)


def _title(name: str, saved: dict[str, np.ndarray]) -> str:
    parts = [name]
    if "epoch" in saved:
        parts.append(f"epoch {int(saved['epoch'])}")
    scores = [
        f"{key.replace('_', ' ')} {float(saved[key]):.3f}"
        for key in ("trustworthiness", "knn_recall")
        if key in saved
    ]
    return ", ".join(parts) + (": " + ", ".join(scores) if scores else "")
