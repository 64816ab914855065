"""Benchmark `spt_distance.knn_search` against the searches a user would reach for instead.

Measured in one run, call by call (the methods of a cell take turns, repeat after repeat, so
that a busy machine slows them alike): `knn_search`; torch brute force (`torch.cdist` for
euclidean/squared/manhattan, a normalised matrix product for cosine, then `topk`); faiss-cpu
flat indexes (`IndexFlatL2` for euclidean and squared, `IndexFlatIP` on normalised vectors
for cosine, keys added and normalised before timing); scikit-learn
`NearestNeighbors(algorithm="brute")` (fitted before timing). Every figure is a median.
Each timed call starts after a pause (``--pause``, 0.2 s): the libraries bring their own
thread pools (OpenBLAS, faiss's OpenMP, torch's), whose threads keep spinning on the cores
for a while after a call and would otherwise slow whichever call comes next.

Achieved GFLOP/s count 2*B*N*D flops per search and sit next to the machine's `torch.matmul`
rate on a 4096 x 4096 float32 product measured in the same run. Extra memory of
`knn_search` is reported twice: the plan's estimate (`plan_chunks(...).scratch_bytes`) and
the measured peak growth of the process's resident set during one call (sampled every
0.2 ms after `malloc_trim`, so it counts every allocation of the call, outputs and BLAS
packing buffers included). On CUDA the measured figure is the growth of
`torch.cuda.max_memory_allocated`, and faiss-cpu and scikit-learn are left out.

The cost of ``exact_distances=True`` (the search spt-knn runs) is measured on its own few
cells, the search with and without it taking turns (``--exact-only`` runs that part alone).

Run from the repository root (faiss-cpu and scikit-learn are benchmark-only dependencies):

    python tools/bench_distance.py --out bench_results/distance.json
    python tools/bench_distance.py --quick
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import math
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial

import torch
from bench_output import write_json

from spt_distance import METRICS, knn_search, plan_chunks

FULL_GRID = {"B": 256, "N": (8192, 65536), "D": (128, 512, 2048), "k": (20, 200)}
QUICK_GRID = {"B": 64, "N": (2048,), "D": (32, 128), "k": (5, 20)}
EXACT_CELLS = (  # (B, N, D, k): the demo's kNN (k=10 and a sweep's k=100), then wider rows
    (256, 1500, 128, 10), (256, 1500, 128, 100), (256, 8192, 512, 20), (256, 8192, 512, 200),
    (256, 8192, 2048, 200),
)  # fmt: skip
QUICK_EXACT_CELLS = ((256, 1500, 128, 10), (256, 1500, 128, 100))
TARGET_METRICS = ("euclidean", "cosine")
SKLEARN_NAMES = {
    "euclidean": "euclidean",
    "squared_euclidean": "sqeuclidean",
    "cosine": "cosine",
    "manhattan": "manhattan",
}


@dataclass
class Cell:
    metric: str
    B: int
    N: int
    D: int
    k: int
    ms: dict[str, float | None] = field(default_factory=dict)
    repeats: dict[str, int] = field(default_factory=dict)
    gflops: dict[str, float | None] = field(default_factory=dict)
    ratio_vs_faiss: float | None = None
    ratio_vs_torch: float | None = None
    plan_chunk: int = 0
    plan_scratch_mib: float = 0.0
    measured_extra_mib: float | None = None


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda needs a CUDA device")
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    faiss, neighbors = (None, None) if args.exact_only else optional_baselines(device, threads)
    grid = QUICK_GRID if args.quick else FULL_GRID
    metrics = tuple(args.metrics.split(",")) if args.metrics else METRICS
    started = time.perf_counter()
    matmul = matmul_gflops(device, 1024 if args.quick else 4096)
    print(f"device {device}, {threads} threads, torch.matmul fp32: {matmul:.1f} GFLOP/s")
    cells: list[Cell] = []
    if args.exact_only:
        grid = {**grid, "N": ()}
    for n_keys in grid["N"]:
        for dim in grid["D"]:
            generator = torch.Generator().manual_seed(args.seed)
            keys = torch.randn(n_keys, dim, generator=generator).to(device)
            queries = torch.randn(grid["B"], dim, generator=generator).to(device)
            for metric in metrics:
                indexes = build_indexes(faiss, neighbors, metric, keys, grid["k"])
                for k in grid["k"]:
                    cell = Cell(metric, grid["B"], n_keys, dim, k)
                    measure_cell(cell, queries, keys, indexes, args)
                    cells.append(cell)
                    print_row(cell, matmul)
    low_precision = [] if args.exact_only else measure_low_precision(grid, device, args)
    summary = summarize(cells, matmul) if cells else {"matmul_gflops": round(matmul, 1)}
    summary["low_precision"] = low_precision
    summary["exact_distances"] = measure_exact(
        QUICK_EXACT_CELLS if args.quick else EXACT_CELLS, device, args
    )
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    print_summary(summary)
    write_json(
        args.out,
        {
            "config": config(args, device, threads, matmul),
            "summary": summary,
            "cells": [asdict(c) for c in cells],
        },
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small grid for a smoke test")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", help="write the results as JSON to this path")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per method (max)")
    parser.add_argument(
        "--time-per-method",
        type=float,
        default=2.0,
        help="seconds per method and cell; fewer repeats (at least 1) for slow calls",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch/faiss/BLAS threads")
    parser.add_argument("--metrics", default="", help="comma-separated subset of the metrics")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--exact-only", action="store_true", help="only the cost of exact_distances=True"
    )
    parser.add_argument(
        "--pause", type=float, default=0.2, help="idle seconds before every timed call"
    )
    return parser.parse_args()


def optional_baselines(device: torch.device, threads: int):
    """faiss and scikit-learn, each with ``threads`` threads (CPU runs only)."""
    if device.type != "cpu":
        return None, None
    import faiss
    from sklearn.neighbors import NearestNeighbors
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(threads)
    threadpool_limits(threads)
    return faiss, NearestNeighbors


def matmul_gflops(device: torch.device, size: int) -> float:
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    seconds = median_time(lambda: a @ b, device, repeats=5)
    return 2 * size**3 / seconds / 1e9


def build_indexes(faiss, neighbors, metric: str, keys: torch.Tensor, ks) -> dict:
    indexes = {}
    if faiss is not None and metric != "manhattan":
        x = keys.numpy()
        if metric == "cosine":
            x = torch.nn.functional.normalize(keys, dim=1).numpy()
            index = faiss.IndexFlatIP(keys.shape[1])
        else:
            index = faiss.IndexFlatL2(keys.shape[1])
        index.add(x)
        indexes["faiss"] = index
    if neighbors is not None:
        fitted = neighbors(algorithm="brute", metric=SKLEARN_NAMES[metric], n_jobs=None)
        indexes["sklearn"] = fitted.fit(keys.numpy())
    return indexes


def searches(metric: str, queries: torch.Tensor, keys: torch.Tensor, k: int, indexes: dict):
    """Callables that each answer the same k-nearest query."""
    out: dict[str, Callable[[], object]] = {"spt": lambda: knn_search(queries, keys, k, metric)}

    def torch_brute():
        if metric == "cosine":
            unit_q = torch.nn.functional.normalize(queries, dim=1)
            unit_x = torch.nn.functional.normalize(keys, dim=1)
            distances = 1 - unit_q @ unit_x.T
        else:
            distances = torch.cdist(queries, keys, p=1.0 if metric == "manhattan" else 2.0)
            if metric == "squared_euclidean":
                distances = distances.square()
        return distances.topk(k, dim=1, largest=False)

    out["torch"] = torch_brute
    if "faiss" in indexes:
        index = indexes["faiss"]

        def faiss_search():
            q = queries
            if metric == "cosine":
                q = torch.nn.functional.normalize(queries, dim=1)
            distances, labels = index.search(q.numpy(), k)
            if metric == "euclidean":
                distances = distances.clip(min=0) ** 0.5
            return distances, labels

        out["faiss"] = faiss_search
    if "sklearn" in indexes:
        fitted = indexes["sklearn"]
        out["sklearn"] = lambda: fitted.kneighbors(queries.numpy(), n_neighbors=k)
    return out


def measure_cell(cell, queries, keys, indexes, args):
    device = queries.device
    max_repeats, time_per_method = args.repeats, args.time_per_method
    calls = searches(cell.metric, queries, keys, cell.k, indexes)
    first = {name: timed(fn, device) for name, fn in calls.items()}  # warm-up, also a probe
    repeats = {
        name: max(1, min(max_repeats, int(time_per_method / max(first[name], 1e-6))))
        for name in calls
    }
    samples: dict[str, list[float]] = {name: [] for name in calls}
    if max(first.values()) > 5 * time_per_method:
        for name, seconds in first.items():  # too slow to repeat: the probe is the sample
            if seconds > time_per_method:
                samples[name].append(seconds)
                repeats[name] = 1
    for turn in range(max(repeats.values())):
        names = list(calls)
        names = names[turn % len(names) :] + names[: turn % len(names)]
        for name in names:
            if len(samples[name]) < repeats[name]:
                time.sleep(args.pause)
                samples[name].append(timed(calls[name], device))
    flops = 2 * cell.B * cell.N * cell.D
    for name, values in samples.items():
        seconds = statistics.median(values)
        cell.ms[name] = round(seconds * 1e3, 3)
        cell.repeats[name] = len(values)
        cell.gflops[name] = round(flops / seconds / 1e9, 1)
    if "faiss" in cell.ms:
        cell.ratio_vs_faiss = round(cell.ms["spt"] / cell.ms["faiss"], 3)
    cell.ratio_vs_torch = round(cell.ms["spt"] / cell.ms["torch"], 3)
    plan = plan_chunks(cell.B, cell.N, cell.D, cell.k, cell.metric, device=keys.device)
    cell.plan_chunk = plan.chunk
    cell.plan_scratch_mib = round(plan.scratch_bytes / 2**20, 2)
    cell.measured_extra_mib = round(peak_extra_bytes(calls["spt"], device) / 2**20, 2)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def median_time(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()
    return statistics.median(timed(fn, device) for _ in range(repeats))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_extra_bytes(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory growth during one call (see the module docstring for what it counts)."""
    gc.collect()
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    trim = _malloc_trim()
    trim()
    before = _rss()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.0002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = fn()
        peak[0] = max(peak[0], _rss())
    finally:
        done.set()
        sampler.join()
    del result
    return max(0, peak[0] - before)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _malloc_trim() -> Callable[[], None]:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return lambda: libc.malloc_trim(0)
    except OSError:
        return lambda: None


def measure_exact(shapes, device: torch.device, args) -> list[dict]:
    """The cost of ``exact_distances=True`` (cosine and euclidean): the median time of the
    search with it and without it, taking turns, their ratio, and the ratio of the fastest
    calls (steadier on a busy machine)."""
    rows = []
    for n_queries, n_keys, dim, k in shapes:
        generator = torch.Generator().manual_seed(args.seed)
        keys = torch.randn(n_keys, dim, generator=generator).to(device)
        queries = torch.randn(n_queries, dim, generator=generator).to(device)
        for metric in ("cosine", "euclidean"):
            calls = {
                exact: partial(knn_search, queries, keys, k, metric, exact_distances=exact)
                for exact in (False, True)
            }
            samples: dict[bool, list[float]] = {False: [], True: []}
            for call in calls.values():
                call()  # warm-up
            for _ in range(max(args.repeats, 15)):
                for exact, call in calls.items():
                    time.sleep(args.pause / 4)
                    samples[exact].append(timed(call, device))
            plain, exact = (statistics.median(samples[e]) * 1e3 for e in (False, True))
            fastest = {e: min(samples[e]) for e in (False, True)}
            row = {"metric": metric, "B": n_queries, "N": n_keys, "D": dim, "k": k}
            row |= {"plain_ms": round(plain, 2), "exact_ms": round(exact, 2)}
            row |= {"ratio": round(exact / plain, 3)}
            rows.append(row | {"ratio_of_minima": round(fastest[True] / fastest[False], 3)})
    return rows


def measure_low_precision(grid: dict, device: torch.device, args) -> list[dict]:
    """float16/bfloat16 keys and queries against float32 ones: time, and equal results."""
    n_keys, dim, k = max(grid["N"]), grid["D"][len(grid["D"]) // 2], grid["k"][0]
    generator = torch.Generator().manual_seed(args.seed + 1)
    keys = torch.randn(n_keys, dim, generator=generator).to(device)
    queries = torch.randn(grid["B"], dim, generator=generator).to(device)
    rows = []
    for metric in TARGET_METRICS:
        for dtype in (torch.bfloat16, torch.float16):
            low_k, low_q = keys.to(dtype), queries.to(dtype)
            up_k, up_q = low_k.float(), low_q.float()
            low = knn_search(low_q, low_k, k, metric)
            high = knn_search(up_q, up_k, k, metric)
            same = torch.equal(low[0], high[0]) and torch.equal(low[1], high[1])
            times = {"low": [], "fp32": []}
            for _ in range(max(3, args.repeats)):
                time.sleep(args.pause)
                times["low"].append(timed(lambda: knn_search(low_q, low_k, k, metric), device))
                times["fp32"].append(timed(lambda: knn_search(up_q, up_k, k, metric), device))
            low_ms = statistics.median(times["low"]) * 1e3
            fp32_ms = statistics.median(times["fp32"]) * 1e3
            rows.append(
                {
                    "metric": metric,
                    "dtype": str(dtype).removeprefix("torch."),
                    "N": n_keys,
                    "D": dim,
                    "k": k,
                    "ms": round(low_ms, 2),
                    "fp32_ms": round(fp32_ms, 2),
                    "ratio": round(low_ms / fp32_ms, 3),
                    "identical_to_fp32_on_upcast": same,
                }
            )
    return rows


def summarize(cells: list[Cell], matmul: float) -> dict:
    target = [c for c in cells if c.metric in TARGET_METRICS and c.ratio_vs_faiss is not None]
    summary: dict = {"matmul_gflops": round(matmul, 1)}
    if target:
        ratios = [c.ratio_vs_faiss for c in target]
        summary["vs_faiss_geomean"] = round(geomean(ratios), 3)
        summary["vs_faiss_max"] = max(ratios)
        summary["vs_faiss_cells_over_1.5"] = sum(r > 1.5 for r in ratios)
    manhattan = [c.ms["torch"] / c.ms["spt"] for c in cells if c.metric == "manhattan"]
    if manhattan:
        summary["manhattan_speedup_vs_cdist_geomean"] = round(geomean(manhattan), 3)
        summary["manhattan_speedup_vs_cdist_min"] = round(min(manhattan), 3)
    summary["max_measured_extra_mib"] = max((c.measured_extra_mib or 0) for c in cells)
    summary["max_plan_scratch_mib"] = max(c.plan_scratch_mib for c in cells)
    return summary


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def print_row(cell: Cell, matmul: float) -> None:
    if not hasattr(print_row, "header"):
        print_row.header = True  # type: ignore[attr-defined]
        print(
            f"{'metric':<18}{'N':>6}{'D':>5}{'k':>4} | {'spt ms':>8}{'torch':>9}{'faiss':>9}"
            f"{'sklearn':>9} | {'/faiss':>7}{'/torch':>7} | {'GF/s':>6}{'%mm':>5}"
            f"{'faissGF':>8} | {'MiB meas':>8}{'plan':>6}"
        )

    def ms(name: str) -> str:
        value = cell.ms.get(name)
        return f"{value:9.1f}" if value is not None else f"{'-':>9}"

    faiss_gf = cell.gflops.get("faiss")
    print(
        f"{cell.metric:<18}{cell.N:>6}{cell.D:>5}{cell.k:>4} | {cell.ms['spt']:8.1f}"
        f"{ms('torch')}{ms('faiss')}{ms('sklearn')} | "
        f"{_fmt(cell.ratio_vs_faiss, 7, 2)}{_fmt(cell.ratio_vs_torch, 7, 2)} | "
        f"{cell.gflops['spt']:6.0f}{100 * cell.gflops['spt'] / matmul:5.0f}"
        f"{_fmt(faiss_gf, 8, 0)} | {_fmt(cell.measured_extra_mib, 8, 1)}"
        f"{cell.plan_scratch_mib:6.1f}",
        flush=True,
    )


def _fmt(value: float | None, width: int, digits: int) -> str:
    return f"{value:{width}.{digits}f}" if value is not None else f"{'-':>{width}}"


def print_summary(summary: dict) -> None:
    print("\nsummary")
    for key, value in summary.items():
        if key == "exact_distances":
            for row in value:
                print(
                    f"  exact {row['metric']:<10}B={row['B']} N={row['N']} D={row['D']} "
                    f"k={row['k']}: {row['exact_ms']:.1f} ms vs {row['plain_ms']:.1f} ms "
                    f"without (x{row['ratio']:.2f}; fastest calls x{row['ratio_of_minima']:.2f})"
                )
        elif key == "low_precision":
            for row in value:
                print(
                    f"  {row['metric']:<10}{row['dtype']:<9} N={row['N']} D={row['D']} "
                    f"k={row['k']}: {row['ms']:.1f} ms vs fp32 {row['fp32_ms']:.1f} ms "
                    f"(x{row['ratio']:.2f}), identical to fp32 on upcast values: "
                    f"{row['identical_to_fp32_on_upcast']}"
                )
        else:
            print(f"  {key}: {value}")


def config(args, device: torch.device, threads: int, matmul: float) -> dict:
    versions = {"torch": torch.__version__}
    for name in ("faiss", "sklearn", "numpy"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return {
        "device": str(device),
        "cpu": cpu,
        "threads": threads,
        "quick": args.quick,
        "max_repeats": args.repeats,
        "time_per_method_s": args.time_per_method,
        "matmul_gflops": round(matmul, 1),
        "versions": versions,
        "data": "standard normal keys and queries, float32",
    }


if __name__ == "__main__":
    main()
