"""What spt's callbacks add to a training and a validation epoch of the demo.

The demo's model and data (`tools/demo.py`), one warm-up epoch, then one timed training
epoch and one timed validation epoch, bare and with each callback attached alone and with
all of them, measured in the same run: the configurations take turns, repeat after repeat,
and every figure is a median. LatentViz runs at its default `update_interval`.

Each spt callback's hooks are timed too: "hooks ms" is the time spent in the callbacks'
training hooks per epoch and "share" its ratio to the bare epoch (a direct measure, less
noisy than the difference of two epoch times on a shared machine); the kNN validation cost
per batch and its share of the validation epoch come from the same timings.

"knn queue" and "linear online" take turns too (the demo's kNN and linear probe without their
clean variants: the differences are one clean evaluation each, reported against a bare
training epoch); a kNN sweep (k = 10, 20, 50, 100
from one search) is timed per `knn_predict` call against single k, in the same run.

    python tools/bench_overhead.py --out bench_results/overhead.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))
import demo
from bench_clean_eval import LINEAR_ONLINE, print_probe_clean, probe_clean_cost
from bench_knn import KNN_QUEUE, clean_cost, print_knn, queue_only_knn, sweep_cost
from bench_output import write_json

import spt_all as spt

TIMED_HOOKS = tuple(name for name in vars(Callback) if name.startswith("on_"))
TIMED_EPOCHS = 3  # after one warm-up epoch
QUEUE_PROBES_MAP = "knn+probes+map"
NAMES = {
    spt.OnlineKNN: "knn",
    spt.OnlineQueue: "queue",
    spt.LatentViz: "latentviz",
    spt.MetricsCallback: "metrics",
}


class Stamp(Callback):
    """Writes the clock into ``times`` at the epoch boundaries it is placed around."""

    def __init__(self, times: dict[str, list[float]], edge: str) -> None:
        self.times, self.edge = times, edge

    def _stamp(self, event: str) -> None:
        self.times.setdefault(f"{event}_{self.edge}", []).append(time.perf_counter())

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.edge == "start":
            self._stamp("train")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.edge == "end":
            self._stamp("train")

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.edge == "start":
            self._stamp("val")

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.edge == "end":
            self._stamp("val")


def callback_name(callback: Callback) -> str:
    if isinstance(callback, spt.OnlineProbe):
        return f"{callback.name} probe"
    return NAMES.get(type(callback), type(callback).__name__)


def time_hooks(callback: Callback, totals: dict[str, float], counts: dict[str, int]) -> None:
    """Replace the callback's hooks on the instance by timed wrappers (Lightning looks
    hooks up with ``getattr``, so the instance attribute wins)."""
    for hook in TIMED_HOOKS:
        method = getattr(callback, hook)

        def wrapped(*args: Any, _method: Callable = method, _hook: str = hook, **kwargs: Any):
            start = time.perf_counter()
            try:
                return _method(*args, **kwargs)
            finally:
                totals[_hook] += time.perf_counter() - start
                counts[_hook] += 1

        setattr(callback, hook, wrapped)


def configurations(out: Path, clean: DataLoader) -> list[str]:
    """Bare, each of the demo's callbacks alone, the issue's list (kNN queue, probes,
    LatentViz), all of them, the demo's kNN without its clean bank."""
    demos = [callback_name(c) for c in demo.callbacks(out, clean)]
    return ["bare", *demos, QUEUE_PROBES_MAP, "all", KNN_QUEUE, LINEAR_ONLINE]


def build(config: str, out: Path, clean: DataLoader) -> list[Callback]:
    """The demo's callbacks (``clean``: the labelled training set for the clean variants),
    built anew for every run, LatentViz at its default interval."""
    every = demo.callbacks(out, clean, latent_update_interval=None)
    if config == "bare":
        return []
    if config == KNN_QUEUE:
        return [queue_only_knn(every)]
    if config == LINEAR_ONLINE:  # clean=None: the demo's linear probe without clean_loader
        return [c for c in demo.callbacks(out, None) if callback_name(c) == "linear probe"]
    if config == "all":
        return every
    if config == QUEUE_PROBES_MAP:
        return [c for c in every if not isinstance(c, spt.MetricsCallback)]
    return [c for c in every if callback_name(c) == config]


def run_once(config: str, out: Path, train, val) -> dict[str, Any]:
    L.seed_everything(0, verbose=False)
    times: dict[str, list[float]] = {}
    totals: dict[str, dict[str, float]] = {}
    counts: dict[str, dict[str, int]] = {}
    callbacks = build(config, out, DataLoader(train, batch_size=256))
    for callback in callbacks:
        name = callback_name(callback)
        totals[name], counts[name] = defaultdict(float), defaultdict(int)
        time_hooks(callback, totals[name], counts[name])
    trainer = L.Trainer(
        max_epochs=1 + TIMED_EPOCHS,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[Stamp(times, "start"), *callbacks, Stamp(times, "end")],
    )
    reset = Reset(totals, counts)
    trainer.callbacks.insert(0, reset)
    trainer.fit(
        demo.SimCLR(),
        DataLoader(train, batch_size=128, shuffle=True, drop_last=True),
        DataLoader(val, batch_size=256),
    )
    # Validation runs inside the training epoch: take it out of the epoch's time.
    val = [end - start for start, end in zip(times["val_start"], times["val_end"], strict=True)]
    train = [
        end - start - v
        for start, end, v in zip(times["train_start"], times["train_end"], val, strict=True)
    ]
    return {
        "train_s": sum(train[1:]) / TIMED_EPOCHS,
        "val_s": sum(val[1:]) / TIMED_EPOCHS,
        "hooks": {
            name: {hook: [totals[name][hook], counts[name][hook]] for hook in totals[name]}
            for name in totals
        },
    }


class Reset(Callback):
    """Times the queues that callbacks register in their ``setup``, and forgets the hook
    timings of the warm-up epoch."""

    def __init__(self, totals, counts) -> None:
        self.totals, self.counts = totals, counts

    def on_fit_start(self, trainer, pl_module) -> None:
        for queue in trainer.callbacks:
            if isinstance(queue, spt.OnlineQueue) and "queue" not in self.totals:
                self.totals["queue"], self.counts["queue"] = defaultdict(float), defaultdict(int)
                time_hooks(queue, self.totals["queue"], self.counts["queue"])

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 1:
            for table in (*self.totals.values(), *self.counts.values()):
                table.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", help="write the results as JSON to this path")
    args = parser.parse_args()
    train, val = demo.digits(0)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        configs = configurations(out, DataLoader(train, batch_size=256))
        runs: dict[str, list[dict]] = {c: [] for c in configs}
        for turn in range(args.repeats):
            order = configs[turn % len(configs) :] + configs[: turn % len(configs)]
            for config in order:
                runs[config].append(run_once(config, out, train, val))
    result = summarize(runs, len(val), torch.get_num_threads())
    result["knn_sweep"] = sweep_cost(10 * args.repeats)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    print_table(result)
    write_json(args.out, result)


def summarize(runs: dict[str, list[dict]], val_rows: int, threads: int) -> dict[str, Any]:
    median = statistics.median
    bare_train = median(r["train_s"] for r in runs["bare"])
    bare_val = median(r["val_s"] for r in runs["bare"])
    rows = []
    for config, samples in runs.items():
        train_s = median(r["train_s"] for r in samples)
        val_s = median(r["val_s"] for r in samples)
        hooks: dict[str, dict[str, float]] = defaultdict(dict)
        for name in samples[0]["hooks"]:
            for hook in samples[0]["hooks"][name]:
                per_call = [
                    r["hooks"][name][hook][0] / max(1, r["hooks"][name][hook][1]) for r in samples
                ]
                hooks[name][hook] = round(median(per_call) * 1e3, 3)
        work = median(training_hook_seconds(r) for r in samples) / TIMED_EPOCHS
        rows.append(
            {
                "config": config,
                "train_ms": round(train_s * 1e3, 1),
                "train_overhead": round(train_s / bare_train - 1, 3),
                "callback_train_ms": round(work * 1e3, 1),
                "callback_train_share": round(work / bare_train, 3),
                "val_ms": round(val_s * 1e3, 1),
                "val_overhead": round(val_s / bare_val - 1, 3),
                "hook_ms_per_call": hooks,
            }
        )
    knn = next(r for r in rows if r["config"] == "knn")
    knn_batch_ms = knn["hook_ms_per_call"]["knn"]["on_validation_batch_end"]
    batches = -(-val_rows // 256)
    return {
        "threads": threads,
        "repeats": len(runs["bare"]),
        "rows": rows,
        "knn_validation_ms_per_batch": knn_batch_ms,
        "knn_share_of_validation_epoch": round(knn_batch_ms * batches / knn["val_ms"], 3),
        **clean_cost(rows, batches, bare_train),
        **probe_clean_cost(rows, bare_train),
    }


def training_hook_seconds(run: dict) -> float:
    """Time spent in the callbacks' training hooks over the timed epochs (validation hooks
    run inside the training epoch but are counted on the validation side)."""
    return sum(
        seconds
        for hooks in run["hooks"].values()
        for hook, (seconds, _) in hooks.items()
        if not hook.startswith(("on_validation", "on_test", "on_sanity"))
    )


def print_table(result: dict[str, Any]) -> None:
    print(
        f"{'config':<15}{'train ms':>9}{'overhead':>10}{'hooks ms':>10}{'share':>7}"
        f"{'val ms':>9}{'overhead':>10}"
    )
    for row in result["rows"]:
        print(
            f"{row['config']:<15}{row['train_ms']:9.1f}{100 * row['train_overhead']:9.1f}%"
            f"{row['callback_train_ms']:10.1f}{100 * row['callback_train_share']:6.1f}%"
            f"{row['val_ms']:9.1f}{100 * row['val_overhead']:9.1f}%"
        )
    print("\nper-call hook cost (ms), 'all' configuration:")
    for name, hooks in next(r for r in result["rows"] if r["config"] == "all")[
        "hook_ms_per_call"
    ].items():
        busy = {h: ms for h, ms in hooks.items() if ms >= 0.01}
        print(f"  {name:<14}" + "  ".join(f"{h}={ms:.2f}" for h, ms in busy.items()))
    print(
        f"\nkNN validation: {result['knn_validation_ms_per_batch']:.2f} ms per batch, "
        f"{100 * result['knn_share_of_validation_epoch']:.1f}% of the validation epoch"
    )
    print_knn(result)
    print_probe_clean(result)


if __name__ == "__main__":
    main()
