"""The demo's last latent map beside UMAP's, on the very rows LatentViz drew.

Kept apart from ``demo.py`` (which imports it) so that each module stays short. Both maps are
scored by the same functions (``spt_latentviz.trustworthiness`` and ``knn_recall``) at
LatentViz's ``k_neighbors`` and drawn side by side, coloured by class with the same colours.
"""

from __future__ import annotations

import importlib
import os
import time
from pathlib import Path

import numpy as np
import torch
from lightning import Trainer
from torch import Tensor

from spt_core import distributed
from spt_latentviz import LatentViz, knn_recall, load_map, trustworthiness
from spt_queue import find_queue, read_aligned


def find_latent_viz(trainer: Trainer, name: str) -> LatentViz:
    """The LatentViz callback called ``name`` on ``trainer``.

    Raises:
        ValueError: If there is none.
    """
    for callback in trainer.callbacks:
        if isinstance(callback, LatentViz) and callback.name == name:
            return callback
    raise ValueError(f"no LatentViz callback named {name!r} on the Trainer")


def drawn_rows(trainer: Trainer, viz: LatentViz) -> tuple[Tensor, Tensor]:
    """The rows (features, labels) ``viz`` drew in its last map, read after the fit as it read
    them: the ``queue_length`` newest rows of its input and target queues (``read_aligned``),
    every rank's rows gathered in rank order, rows with a non-finite value left out.

    Right only when no training batch came after the last map (a fit that ran to
    ``max_epochs``: its last map is drawn at the last epoch's end). Collective under DDP: every
    rank calls it together.

    Raises:
        ValueError: If ``viz`` has no target (the picture is coloured by class).
    """
    if viz.target is None:
        raise ValueError(f"{viz.state_key}: the comparison colours by class and needs a target")
    queues = [find_queue(trainer, viz.input), find_queue(trainer, viz.target)]
    if any(queue is None for queue in queues):
        raise ValueError(f"{viz.state_key}: its queues are not on the Trainer (no fit ran)")
    features, labels = read_aligned(queues, viz.queue_length, owner="demo")
    features, labels = distributed.gather_uneven(features), distributed.gather_uneven(labels)
    features = features.reshape(len(features), -1).float()
    finite = torch.isfinite(features).all(dim=1)
    return features[finite], labels.reshape(-1)[finite]


def last_map(trainer: Trainer, viz: LatentViz, labels: Tensor) -> dict[str, np.ndarray]:
    """The ``.npz`` of ``viz``'s last map (``load_map``), checked to hold one point per row of
    ``labels`` in the same label order.

    Raises:
        RuntimeError: If no map was drawn, or the map's rows are not these rows.
    """
    if viz.last_plot_epoch is None:
        raise RuntimeError(f"{viz.state_key} drew no map")
    path = Path(viz.map_folder(trainer)) / f"epoch_{viz.last_plot_epoch:04d}.npz"
    drawn = load_map(path)
    mine = labels.cpu().numpy()
    if len(drawn["coordinates"]) != len(mine) or not np.array_equal(drawn["labels"], mine):
        raise RuntimeError(
            f"{path} holds {len(drawn['coordinates'])} points, the queues {len(mine)} rows with "
            "other labels: not the rows drawn (did a training batch come after the last map?)"
        )
    return drawn


def scores(features: Tensor, coordinates: np.ndarray, k: int, metric: str) -> dict[str, float]:
    """Trustworthiness and kNN recall at ``k`` of a 2D map of ``features`` (spt_latentviz's)."""
    low = torch.as_tensor(np.asarray(coordinates, dtype=np.float32))
    return {
        "trustworthiness": float(trustworthiness(features, low, k, metric)),
        "knn_recall": float(knn_recall(features, low, k, metric)),
    }


def fit_umap(features: Tensor, k: int, seed: int, warm_up: bool = True) -> tuple[np.ndarray, float]:
    """UMAP's map of ``features`` (``n_neighbors=k``, ``random_state=seed``, so one thread) and
    the seconds its ``fit_transform`` took. ``warm_up``: fit 200 of the rows first, untimed,
    so that numba's compilation is not counted."""
    import umap

    rows = features.cpu().numpy()
    if warm_up:
        umap.UMAP(n_neighbors=k, random_state=seed, n_jobs=1).fit_transform(rows[:200])
    start = time.perf_counter()
    coordinates = umap.UMAP(n_neighbors=k, random_state=seed, n_jobs=1).fit_transform(rows)
    return coordinates, time.perf_counter() - start


def draw(path: str | os.PathLike[str], labels: np.ndarray, maps: dict[str, dict], k: int) -> None:
    """Write the maps side by side as a PNG (80 dpi), coloured by class with one palette;
    ``maps``: method -> ``{"coordinates", "trustworthiness", "knn_recall"}``, in order."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    classes, index = np.unique(labels, return_inverse=True)
    palette = colormaps["tab10" if len(classes) <= 10 else "tab20"]
    order = np.random.default_rng(0).permutation(len(labels))  # no class hides another
    fig = Figure(figsize=(11.0, 5.2), dpi=80, layout="constrained")
    for ax, (method, drawn) in zip(fig.subplots(1, len(maps)), maps.items(), strict=True):
        xy = np.asarray(drawn["coordinates"])[order]
        ax.scatter(xy[:, 0], xy[:, 1], c=palette(index[order] % palette.N), s=5, linewidths=0)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(
            f"{method}: trustworthiness@{k} {drawn['trustworthiness']:.3f}, "
            f"kNN recall@{k} {drawn['knn_recall']:.3f}"
        )
    handles = [
        Line2D([], [], marker="o", linestyle="", color=palette(i % palette.N), label=str(c))
        for i, c in enumerate(classes)
    ]
    fig.legend(handles=handles, title="digit", loc="outside right center", frameon=False)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=fig.dpi)


def compare_maps(
    features: Tensor,
    labels: np.ndarray,
    coordinates: np.ndarray,
    path: str | os.PathLike[str] | None,
    seed: int = 0,
    k: int = 15,
    metric: str = "euclidean",
    warm_up: bool = True,
) -> dict[str, dict]:
    """Score a LatentViz map (``coordinates`` of ``features``) and UMAP's map of the same rows
    with the same functions at ``k``; draw both side by side to ``path`` (``None``: no picture).

    Returns:
        ``{"LatentViz": scores, "UMAP": scores}``, each with ``trustworthiness``,
        ``knn_recall`` and ``coordinates``; UMAP's with the ``seconds`` of its fit.
    """
    umap_coordinates, seconds = fit_umap(features, k, seed, warm_up)
    maps = {
        "LatentViz": {**scores(features, coordinates, k, metric), "coordinates": coordinates},
        "UMAP": {
            **scores(features, umap_coordinates, k, metric),
            "coordinates": umap_coordinates,
            "seconds": seconds,
        },
    }
    if path is not None:
        draw(path, labels, maps, k)
    return maps


def missing() -> str | None:
    """Why the comparison cannot run here (a package that does not import), or ``None``."""
    for module, package in (("umap", "umap-learn"), ("matplotlib", "matplotlib")):
        try:
            importlib.import_module(module)
        except ImportError as error:
            return f"{package} does not import ({error}); pip install {package}"
    return None


def report(trainer: Trainer, out: Path, seed: int) -> None:
    """Map the rows of the demo's last latent map with UMAP, score and draw both and print one
    line. Collective under DDP (the rows are gathered): every rank calls it; rank 0 reports.

    Raises:
        RuntimeError: If the rows read are not the rows drawn (see :func:`last_map`), or
            LatentViz's map of them scores otherwise than the score it saved.
    """
    viz = find_latent_viz(trainer, "latent")
    features, labels = drawn_rows(trainer, viz)
    if not trainer.is_global_zero:
        return
    reason = missing()
    if reason is not None:
        print(f"\nlatent map vs UMAP: skipped, {reason}")
        return
    drawn = last_map(trainer, viz, labels)
    path = out / "latent_vs_umap.png"
    k, epoch = viz.k_neighbors, viz.last_plot_epoch
    maps = compare_maps(
        features, drawn["labels"], drawn["coordinates"], path, seed, k, viz.distance_metric
    )
    ours, theirs = maps["LatentViz"], maps["UMAP"]
    if abs(ours["trustworthiness"] - float(drawn["trustworthiness"])) > 1e-6:
        raise RuntimeError(
            f"the rows read score {ours['trustworthiness']:.6f} on the last map, LatentViz "
            f"saved {float(drawn['trustworthiness']):.6f}: not the rows it drew"
        )
    print(
        f"\nlatent map vs UMAP on the same {len(features)} rows (epoch {epoch}), at k={k}: "
        f"LatentViz trustworthiness {ours['trustworthiness']:.3f}, kNN recall "
        f"{ours['knn_recall']:.3f}; UMAP trustworthiness {theirs['trustworthiness']:.3f}, kNN "
        f"recall {theirs['knn_recall']:.3f} ({theirs['seconds']:.1f} s, one thread). "
        f"Picture: {path}"
    )
