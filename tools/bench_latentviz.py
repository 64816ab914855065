"""Benchmark: how faithful and how fast is LatentViz's map of scikit-learn's digits?

LatentViz runs in a real ``lightning.Trainer``: its queue is filled once with the 1797
standardised 64-d digits, the backbone's steps add no rows, and the callback takes one update
per training batch (``update_interval=1``) with its default optimizer, ``k_neighbors`` and
``n_negatives``. The wall time is the whole ``Trainer.fit``: Trainer start, neighbour graph,
the updates, and the scored and drawn map at the end of the epoch. UMAP, openTSNE (when
installed) and PCA map the same array in the same process; UMAP and openTSNE first run once
on a few rows so that numba's compilation is not counted. Every map is scored with
``sklearn.manifold.trustworthiness`` at k=10.

    python tools/bench_latentviz.py --updates 300 --threads 1 --out bench_latentviz.json

``--scenario moving`` maps features that move: a SimCLR-style MLP learns on the digits during
the run (20 epochs of 12 batches of 150 rows), LatentViz watches its embeddings at its
defaults (``plot_interval`` aside), and at every map the rows drawn are also mapped by UMAP
(``n_neighbors=k_neighbors``). Per map: trustworthiness@15 of both maps on the same rows
(scikit-learn's), LatentViz's time for the map (its steps at the plot and the projection) and
UMAP's one-shot time:

    python tools/bench_latentviz.py --scenario moving --threads 1 --out bench_moving.json

``--scenario overhead`` times what LatentViz adds to a training step with wide features
(default: D=2048, ``queue_length=2048``, ``update_interval=1``, 64 new random rows per step, a
queue filled before the first step, no map drawn): its ``on_train_batch_end`` per update,
whitening every row of the graph at every update (``reuse_whitening=False``, as before the
cache of whitened rows) and only the new ones (the default), the two taking turns in the same
run from the same seed; the final projections are compared too:

    python tools/bench_latentviz.py --scenario overhead --threads 2 --out bench_overhead.json

Needs scikit-learn (except ``overhead``); umap-learn and openTSNE are optional
(``pip install umap-learn openTSNE``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from bench_output import write_json


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=300, help="LatentViz updates")
    parser.add_argument("--hidden", type=int, default=128, help="projection MLP width")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for every method")
    parser.add_argument("--repeats", type=int, default=1, help="runs per method (median)")
    parser.add_argument("--k", type=int, default=10, help="trustworthiness neighbourhood")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", help="methods to run (default: all available)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--plots", type=Path, help="keep LatentViz's .npz/.png here")
    parser.add_argument("--scenario", choices=("fixed", "moving", "overhead"), default="fixed")
    parser.add_argument("--epochs", type=int, default=20, help="moving: backbone epochs")
    parser.add_argument("--plot-interval", type=int, default=2, help="moving: epochs per map")
    parser.add_argument("--dim", type=int, default=2048, help="overhead: feature size")
    parser.add_argument("--queue-length", type=int, default=2048, help="overhead: queue rows")
    parser.add_argument("--batch-size", type=int, default=64, help="overhead: rows per step")
    parser.add_argument("--steps", type=int, default=40, help="overhead: timed updates")
    parser.add_argument("--accelerator", default="cpu", help="overhead: Lightning accelerator")
    return parser.parse_args()


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.preprocessing import StandardScaler

    data = load_digits()
    return StandardScaler().fit_transform(data.data).astype(np.float32), data.target


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------- methods


def run_latentviz(x: np.ndarray, y: np.ndarray, args: argparse.Namespace, seed: int):
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from spt_latentviz import LatentViz, projection_mlp
    from spt_queue import OnlineQueue

    class NoRows(L.LightningModule):
        """A backbone whose steps add nothing to the queues (they already hold the data)."""

        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> dict:
            return {"embedding": torch.empty(0, x.shape[1]), "label": torch.empty(0).long()}

        def configure_optimizers(self) -> None:
            return None

    features, labels = torch.from_numpy(x), torch.from_numpy(y).long()
    queues = [OnlineQueue("embedding", len(x)), OnlineQueue("label", len(x))]
    queues[0].buffer.append(features)
    queues[1].buffer.append(labels)
    L.seed_everything(seed, verbose=False)
    with tempfile.TemporaryDirectory() as scratch:
        save_dir = args.plots or Path(scratch)
        viz = LatentViz(
            "digits",
            "embedding",
            "label",
            projection=projection_mlp(x.shape[1], args.hidden),
            queue_length=len(x),
            update_interval=1,
            save_dir=save_dir,
        )
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            max_epochs=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            default_root_dir=scratch,
            callbacks=[viz, *queues],
        )
        batches = DataLoader(TensorDataset(torch.zeros(args.updates)), batch_size=1)
        start = time.perf_counter()
        trainer.fit(NoRows(), batches)
        seconds = time.perf_counter() - start
        coordinates = viz.project(features).numpy()
    extra = {
        "updates": viz.optimizer_steps,
        "logged_trustworthiness_at_15": float(
            trainer.callback_metrics["eval/digits_trustworthiness"]
        ),
        "logged_knn_recall_at_15": float(trainer.callback_metrics["eval/digits_knn_recall"]),
    }
    return coordinates, seconds, extra


def run_umap(x: np.ndarray, y: np.ndarray, args: argparse.Namespace, seed: int):
    import umap

    def make() -> Any:
        return umap.UMAP(n_neighbors=15, n_components=2, n_jobs=args.threads)

    make().fit_transform(x[:200])  # numba compiles here, untimed
    start = time.perf_counter()
    coordinates = make().fit_transform(x)
    return coordinates, time.perf_counter() - start, {}


def run_opentsne(x: np.ndarray, y: np.ndarray, args: argparse.Namespace, seed: int):
    from openTSNE import TSNE

    TSNE(n_jobs=args.threads, random_state=seed, n_iter=10).fit(x[:200])
    start = time.perf_counter()
    coordinates = np.asarray(TSNE(n_jobs=args.threads, random_state=seed).fit(x))
    return coordinates, time.perf_counter() - start, {}


def run_pca(x: np.ndarray, y: np.ndarray, args: argparse.Namespace, seed: int):
    from sklearn.decomposition import PCA

    start = time.perf_counter()
    coordinates = PCA(n_components=2, random_state=seed).fit_transform(x)
    return coordinates, time.perf_counter() - start, {}


METHODS: dict[str, tuple[Callable[..., Any], str | None]] = {
    "LatentViz": (run_latentviz, "spt-latentviz"),
    "UMAP": (run_umap, "umap-learn"),
    "openTSNE": (run_opentsne, "openTSNE"),
    "PCA": (run_pca, "scikit-learn"),
}


# ----------------------------------------------------------------------------- main


def main() -> None:
    args = parse()
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    import torch
    from sklearn.manifold import trustworthiness

    torch.set_num_threads(args.threads)
    if args.scenario == "overhead":
        run_overhead(args)
        return
    x, y = digits()
    if args.scenario == "moving":
        run_moving(x, y, args)
        return
    results: list[dict[str, Any]] = []
    for name, (run, package) in METHODS.items():
        if args.only and name not in args.only:
            continue
        if package is not None and version(package) is None:
            print(f"{name}: {package} is not installed, skipped")
            continue
        runs = []
        for repeat in range(args.repeats):
            coordinates, seconds, extra = run(x, y, args, args.seed + repeat)
            score = float(trustworthiness(x, coordinates, n_neighbors=args.k))
            runs.append({"trustworthiness": score, "seconds": seconds, **extra})
        results.append(
            {
                "method": name,
                "version": version(package) if package else None,
                "trustworthiness": statistics.median(r["trustworthiness"] for r in runs),
                "seconds": statistics.median(r["seconds"] for r in runs),
                "runs": runs,
            }
        )
    report(results, args)


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    k = args.k
    print(f"\ndigits (1797 x 64, standardised), {args.threads} thread(s), median of {args.repeats}")
    print(f"| method | trustworthiness@{k} | wall time (s) |")
    print("|---|---|---|")
    for r in results:
        print(
            f"| {r['method']} {r['version'] or ''} | {r['trustworthiness']:.4f} | {r['seconds']:.2f} |"
        )
    by_name = {r["method"]: r for r in results}
    verdict = None
    if "LatentViz" in by_name and "UMAP" in by_name:
        ours, umap = by_name["LatentViz"], by_name["UMAP"]
        gap = umap["trustworthiness"] - ours["trustworthiness"]
        verdict = {
            "trustworthiness_gap_to_umap": gap,
            "within_0.02_of_umap": gap <= 0.02,
            "faster_than_umap": ours["seconds"] < umap["seconds"],
        }
        print(
            f"\nLatentViz vs UMAP: trustworthiness gap {gap:+.4f} "
            f"({'within' if gap <= 0.02 else 'NOT within'} 0.02), "
            f"{ours['seconds']:.2f} s vs {umap['seconds']:.2f} s "
            f"({'faster' if ours['seconds'] < umap['seconds'] else 'NOT faster'})"
        )
    write_results(
        args,
        dataset="sklearn digits, StandardScaler, float32, 1797 x 64",
        k=k,
        updates=args.updates,
        repeats=args.repeats,
        results=results,
        verdict=verdict,
    )


def write_results(args: argparse.Namespace, **payload: Any) -> None:
    """``payload`` and the run's settings and versions, as JSON at ``--out`` (if given)."""
    payload.update(
        threads=args.threads,
        hidden=args.hidden,
        python=platform.python_version(),
        machine=platform.machine(),
        torch=version("torch"),
    )
    write_json(args.out, payload)


# ----------------------------------------------------------------------------- moving features


def run_moving(x: np.ndarray, y: np.ndarray, args: argparse.Namespace) -> None:
    """A backbone that learns while LatentViz maps it; UMAP maps the same rows at every map."""
    import lightning as L
    import torch
    import torch.nn.functional as F
    import umap
    from sklearn.manifold import trustworthiness
    from torch import nn
    from torch.utils.data import DataLoader

    from spt_core.testing import DictDataset
    from spt_latentviz import LatentViz, projection_mlp

    class SimCLR(L.LightningModule):
        """An MLP encoder trained with NT-Xent on two noisy, masked views of each digit."""

        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Sequential(
                nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU()
            )
            self.head = nn.Linear(128, 64)

        def training_step(self, batch: dict, batch_idx: int) -> dict:
            rows = batch["x"]
            views = [(rows + 0.5 * torch.randn_like(rows)) * (torch.rand_like(rows) > 0.3)]
            views.append((rows + 0.5 * torch.randn_like(rows)) * (torch.rand_like(rows) > 0.3))
            z = F.normalize(self.head(self.encoder(torch.cat(views))), dim=1)
            logits = (z @ z.T / 0.2).fill_diagonal_(float("-inf"))
            n = len(rows)
            pairs = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
            loss = F.cross_entropy(logits, pairs)
            return {"loss": loss, "embedding": self.encoder(rows), "label": batch["label"]}

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.parameters(), lr=2e-3)

    frames: list[dict[str, Any]] = []

    class TimedViz(LatentViz):
        """Keeps, at every map, the rows drawn, the coordinates and the time of the map."""

        def refine_map(self, rows: Any, seed: int) -> int:
            start = time.perf_counter()
            steps = super().refine_map(rows, seed)
            coordinates = self.project(rows)
            seconds = time.perf_counter() - start
            record = {"rows": rows.numpy().copy(), "coordinates": coordinates.numpy()}
            frames.append({**record, "epoch": seed, "steps": steps, "seconds": seconds})
            return steps

    L.seed_everything(args.seed, verbose=False)
    data = DictDataset(x=torch.from_numpy(x), label=torch.from_numpy(y).long())
    with tempfile.TemporaryDirectory() as scratch:
        viz = TimedViz(
            "moving",
            "embedding",
            "label",
            projection=projection_mlp(128, args.hidden),
            plot_interval=args.plot_interval,
            save_dir=args.plots or Path(scratch),
        )
        trainer = L.Trainer(
            accelerator="cpu",
            max_epochs=args.epochs,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            default_root_dir=scratch,
            callbacks=[viz],
        )
        trainer.fit(SimCLR(), DataLoader(data, batch_size=150, shuffle=True))
    umap.UMAP(n_neighbors=viz.k_neighbors).fit_transform(x[:200])  # numba compiles, untimed
    plots = []
    for frame in frames:
        rows = frame["rows"]
        start = time.perf_counter()
        reference = umap.UMAP(n_neighbors=viz.k_neighbors, n_jobs=args.threads).fit_transform(rows)
        umap_seconds = time.perf_counter() - start
        k = viz.k_neighbors
        ours = float(trustworthiness(rows, frame["coordinates"], n_neighbors=k))
        theirs = float(trustworthiness(rows, reference, n_neighbors=k))
        plots.append(
            {
                "epoch": frame["epoch"],
                "rows": len(rows),
                "latentviz_trustworthiness": ours,
                "umap_trustworthiness": theirs,
                "gap": theirs - ours,
                "latentviz_seconds": frame["seconds"],
                "latentviz_steps": frame["steps"],
                "umap_seconds": umap_seconds,
            }
        )
    report_moving(plots, args, viz.k_neighbors)


def report_moving(plots: list[dict[str, Any]], args: argparse.Namespace, k: int) -> None:
    print(
        f"\nmoving features: SimCLR MLP on digits, {args.epochs} epochs of 12 batches, "
        f"a map every {args.plot_interval} epochs, {args.threads} thread(s)"
    )
    print(f"| epoch | rows | LatentViz T@{k} | UMAP T@{k} | gap | LatentViz s (steps) | UMAP s |")
    print("|---|---|---|---|---|---|---|")
    for p in plots:
        print(
            f"| {p['epoch']} | {p['rows']} | {p['latentviz_trustworthiness']:.4f} | "
            f"{p['umap_trustworthiness']:.4f} | {p['gap']:+.4f} | "
            f"{p['latentviz_seconds']:.2f} ({p['latentviz_steps']}) | {p['umap_seconds']:.2f} |"
        )
    within = all(p["gap"] <= 0.02 for p in plots)
    faster = all(p["latentviz_seconds"] < p["umap_seconds"] for p in plots)
    print(f"\nevery map within 0.02 of UMAP: {within}; every map faster than UMAP: {faster}")
    write_results(
        args,
        scenario="moving features (SimCLR MLP on sklearn digits, StandardScaler)",
        k=k,
        epochs=args.epochs,
        plot_interval=args.plot_interval,
        umap=version("umap-learn"),
        plots=plots,
        verdict={"within_0.02_of_umap": within, "faster_than_umap": faster},
    )


# ----------------------------------------------------------------------------- step overhead

OVERHEAD_CASES = {"whitened at every update (before)": False, "whitening reused (after)": True}


def run_overhead(args: argparse.Namespace) -> None:
    """LatentViz's training-hook time per update, whitening the rows at every update or
    reusing them, the two cases taking turns ``--repeats`` times."""
    import torch

    seconds: dict[str, list[float]] = {case: [] for case in OVERHEAD_CASES}
    projections: dict[str, dict[str, Any]] = {}
    for _ in range(args.repeats):
        for case, reuse in OVERHEAD_CASES.items():
            times, projection = time_updates(args, reuse)
            seconds[case] += times
            projections[case] = projection
    before, after = (projections[case] for case in OVERHEAD_CASES)
    same = all(torch.equal(before[key], after[key]) for key in before)
    gap = max(float((before[key] - after[key]).abs().max()) for key in before)
    rows = []
    for case, times in seconds.items():
        rows.append(
            {
                "case": case,
                "updates": len(times),
                "mean_ms": 1e3 * statistics.fmean(times),
                "median_ms": 1e3 * statistics.median(times),
            }
        )
    speedup = rows[0]["mean_ms"] / rows[1]["mean_ms"]
    print(
        f"\nLatentViz hook per update: D={args.dim}, queue_length={args.queue_length}, "
        f"{args.batch_size} new rows per step, update_interval=1, projection_mlp(D, "
        f"{args.hidden}), {args.accelerator}, {args.threads} thread(s), {args.repeats} run(s) "
        "of each"
    )
    print("| case | updates | mean ms | median ms |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['updates']} | {r['mean_ms']:.1f} | {r['median_ms']:.1f} |")
    print(
        f"\nbefore / after (means): {speedup:.2f}x; final projections identical: {same} "
        f"(largest parameter difference {gap:.3g})"
    )
    write_results(
        args,
        scenario="training-step overhead of LatentViz, wide random features",
        dim=args.dim,
        queue_length=args.queue_length,
        batch_size=args.batch_size,
        accelerator=args.accelerator,
        results=rows,
        speedup_of_mean=speedup,
        identical_projections=same,
        largest_parameter_difference=gap,
    )


def time_updates(args: argparse.Namespace, reuse: bool) -> tuple[list[float], dict[str, Any]]:
    """One fit of ``--steps`` updates after a warm-up one; the seconds of each timed update
    and the final projection's parameters."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from spt_core.testing import quiet_trainer
    from spt_latentviz import LatentViz, projection_mlp
    from spt_queue import OnlineQueue

    dim, rows_per_step = args.dim, args.batch_size

    class RandomFeatures(L.LightningModule):
        """A backbone whose steps emit fresh random rows and learn nothing (a cheap step)."""

        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> dict:
            return {"embedding": torch.randn(rows_per_step, dim, device=self.device)}

        def configure_optimizers(self) -> None:
            return None

    def synchronize() -> None:
        if torch.cuda.is_available() and args.accelerator in ("gpu", "cuda"):
            torch.cuda.synchronize()

    class TimedViz(LatentViz):
        """Times its training hook; draws no map (this benchmark times the training steps)."""

        def __init__(self, *options: Any, **settings: Any) -> None:
            super().__init__(*options, **settings)
            self.seconds: list[float] = []

        def on_train_batch_end(self, *hook_args: Any) -> None:
            synchronize()
            start = time.perf_counter()
            super().on_train_batch_end(*hook_args)
            synchronize()
            self.seconds.append(time.perf_counter() - start)

        def visualize(self, *options: Any, **settings: Any) -> None:
            return None

    torch.manual_seed(args.seed)
    queue = OnlineQueue("embedding", args.queue_length)
    queue.buffer.append(torch.randn(args.queue_length, dim))
    viz = TimedViz(
        "wide",
        "embedding",
        None,
        projection=projection_mlp(dim, args.hidden),
        queue_length=args.queue_length,
        update_interval=1,
    )
    viz.reuse_whitening = reuse
    with tempfile.TemporaryDirectory() as scratch:
        trainer = quiet_trainer(
            accelerator=args.accelerator, default_root_dir=scratch, callbacks=[viz, queue]
        )
        steps = torch.zeros(args.steps + 1, 1)
        trainer.fit(RandomFeatures(), DataLoader(TensorDataset(steps), batch_size=1))
    parameters = {key: value.detach().cpu() for key, value in viz.projection.state_dict().items()}
    return viz.seconds[1:], parameters  # the first update agrees the scaling


if __name__ == "__main__":
    main()
