"""The kNN figures of `bench_overhead.py`: the cost of a kNN sweep and of a clean evaluation.

A sweep (k = 10, 20, 50, 100 from one search) is timed per `knn_predict` call on the demo's
shapes, interleaved with single-k calls at its largest and smallest k. A clean evaluation is
the time the demo's OnlineKNN spends in its validation hooks per epoch (it embeds the 1500
training images as a clean bank at every validation) less that of the same kNN without a
clean bank (configuration "knn queue" of `bench_overhead`), against a bare training epoch.

    python tools/bench_knn.py  # the sweep alone
"""

from __future__ import annotations

import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

sys.path.insert(0, str(Path(__file__).parent))
import demo

import spt_all as spt

KNN_QUEUE = "knn queue"
SWEEP = (10, 20, 50, 100)


def queue_only_knn(callbacks: list[Callback]) -> spt.OnlineKNN:
    """The demo's OnlineKNN (found in ``callbacks``) without its clean bank."""
    knn = next(c for c in callbacks if isinstance(c, spt.OnlineKNN))
    return spt.OnlineKNN(
        knn.name, knn.input, knn.target, knn.queue_length, knn.metrics.prototypes,
        num_classes=knn.num_classes, k=knn.k, distance_metric=knn.distance_metric,
        weighting=knn.weighting,
    )  # fmt: skip


def sweep_cost(repeats: int) -> dict[str, float]:
    """Median ms per ``knn_predict`` call on the demo's shapes (a 1500-row bank of 128
    features, 256 queries, cosine, exp) of the sweep ``SWEEP`` and of its largest and smallest
    k alone, interleaved, and the sweep's ratio to each (of the medians, and of the fastest
    calls, steadier on a busy machine)."""
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(1500, demo.EMBEDDING, generator=generator)
    bank = spt.knn.knn_bank(rows, torch.arange(1500) % 10, 10)
    queries = torch.randn(256, demo.EMBEDDING, generator=generator)
    calls = {"sweep": SWEEP, "largest": max(SWEEP), "smallest": min(SWEEP)}
    seconds = defaultdict(list)
    for _ in range(repeats):
        for name, k in calls.items():
            start = time.perf_counter()
            spt.knn_predict(queries, bank, k=k, distance_metric="cosine", weighting="exp")
            seconds[name].append(time.perf_counter() - start)
    ms = {name: statistics.median(values) * 1e3 for name, values in seconds.items()}
    fastest = {name: min(values) for name, values in seconds.items()}
    ratios = {}
    for name in ("largest", "smallest"):
        ratios[f"vs_{name}"] = round(ms["sweep"] / ms[name], 3)
        ratios[f"fastest_vs_{name}"] = round(fastest["sweep"] / fastest[name], 3)
    return {**{f"{name}_ms": round(value, 2) for name, value in ms.items()}, **ratios}


def knn_validation_ms(row: dict[str, Any], batches: int) -> float:
    """The kNN's validation hooks per epoch (ms): epoch start and end, and every batch."""
    hooks = defaultdict(float, row["hook_ms_per_call"].get("knn", {}))
    edges = hooks["on_validation_epoch_start"] + hooks["on_validation_epoch_end"]
    return edges + batches * hooks["on_validation_batch_end"]


def clean_cost(rows: list[dict[str, Any]], batches: int, bare_train_s: float) -> dict[str, float]:
    """One clean evaluation (ms): the demo's kNN's validation hooks per epoch less those of
    ``KNN_QUEUE``; and its ratio to a bare training epoch."""
    per_epoch = {r["config"]: knn_validation_ms(r, batches) for r in rows}
    clean_ms = per_epoch["knn"] - per_epoch[KNN_QUEUE]
    return {
        "knn_clean_eval_ms": round(clean_ms, 1),
        "knn_clean_eval_per_train_epoch": round(clean_ms / (bare_train_s * 1e3), 3),
    }


def print_knn(result: dict[str, Any]) -> None:
    sweep = result["knn_sweep"]
    print(
        f"kNN sweep k={SWEEP}: {sweep['sweep_ms']:.1f} ms per call, {sweep['vs_largest']:.2f}x "
        f"k={max(SWEEP)} alone, {sweep['vs_smallest']:.2f}x k={min(SWEEP)} alone (fastest "
        f"calls: {sweep['fastest_vs_largest']:.2f}x, {sweep['fastest_vs_smallest']:.2f}x)"
    )
    if "knn_clean_eval_ms" in result:
        print(
            f"kNN clean evaluation (1500 rows embedded and searched): "
            f"{result['knn_clean_eval_ms']:.1f} ms, "
            f"{result['knn_clean_eval_per_train_epoch']:.2f}x a bare training epoch"
        )


if __name__ == "__main__":
    print_knn({"knn_sweep": sweep_cost(50)})
