"""What one evaluation on clean features costs, against one training epoch of the demo.

The demo's model and data (`tools/demo.py`): the clean loader is the labelled training set
(1500 digits, no augmentation). Each row of the table is one callback measured three ways,
taking turns, repeat after repeat, every figure a median over the timed epochs:

- "bare": the training epoch without any callback (the yardstick);
- "plain": the callback without its clean option; "clean": the same with it, evaluating on
  clean features every epoch. "clean eval ms" is the time of the callback's validation-side
  hooks with the option minus without (embedding the loader, gathering, training or
  searching), and "x epoch" its ratio to the bare training epoch.

Rows are registered in `MEASUREMENTS` (name -> `Measurement`): `probe linear eval` is
OnlineProbe's `clean_loader` (a fresh probe trained `clean_epochs` passes over the cached
features); other callbacks add their own row with `add_measurement`.

    python tools/bench_clean_eval.py --out bench_results/clean_eval.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchmetrics.classification import MulticlassAccuracy

sys.path.insert(0, str(Path(__file__).parent))
import demo
from bench_output import write_json

import spt_all as spt

TIMED_EPOCHS = 2  # after one warm-up epoch
VAL_HOOKS = ("on_validation_start", "on_validation_epoch_start", "on_validation_batch_end",
             "on_validation_epoch_end", "on_validation_end")  # fmt: skip


@dataclass
class Measurement:
    """``make(clean_loader)`` builds the callback; ``clean_loader=None`` builds it plain."""

    make: Callable[[DataLoader | None], Callback]
    note: str = ""


def probe_linear_eval(clean_loader: DataLoader | None) -> Callback:
    return spt.OnlineProbe(
        name="linear",
        input="embedding",
        target="label",
        probe=nn.Linear(demo.EMBEDDING, 10),
        optimizer={"type": "AdamW", "lr": 1e-2},
        metrics={"accuracy": MulticlassAccuracy(num_classes=10)},
        clean_loader=clean_loader,
    )


MEASUREMENTS: dict[str, Measurement] = {
    "probe linear eval": Measurement(
        probe_linear_eval, "embed 1500 rows + 10 passes of AdamW on a linear probe (defaults)"
    ),
}


def add_measurement(
    name: str, make: Callable[[DataLoader | None], Callback], note: str = ""
) -> None:
    """Register another callback's clean evaluation as a row of the table."""
    MEASUREMENTS[name] = Measurement(make, note)


class Clock(Callback):
    """Times each training epoch (validation excluded) and the wrapped callback's
    validation-side hooks per validation epoch."""

    def __init__(self, callback: Callback | None) -> None:
        self.train: list[float] = []
        self.hooks: list[float] = []
        self._start = self._val = 0.0
        if callback is not None:
            for hook in VAL_HOOKS:
                self._wrap(callback, hook)

    def _wrap(self, callback: Callback, hook: str) -> None:
        method = getattr(callback, hook)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.hooks[-1] += time.perf_counter() - start

        setattr(callback, hook, timed)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start, self._val = time.perf_counter(), 0.0

    def on_validation_start(self, trainer, pl_module) -> None:
        self.hooks.append(0.0)
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        self._val += time.perf_counter() - self._val_start

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.train.append(time.perf_counter() - self._start - self._val)


def run_once(callback: Callback | None, train: Dataset, val: Dataset) -> tuple[float, float]:
    """Mean training-epoch seconds and mean hook seconds per validation, over the timed
    epochs."""
    L.seed_everything(0, verbose=False)
    clock = Clock(callback)
    trainer = L.Trainer(
        max_epochs=1 + TIMED_EPOCHS, accelerator="cpu", devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, callbacks=[clock] + ([callback] if callback else []),
    )  # fmt: skip
    trainer.fit(
        demo.SimCLR(),
        DataLoader(train, batch_size=128, shuffle=True, drop_last=True),
        DataLoader(val, batch_size=256),
    )
    return statistics.mean(clock.train[1:]), statistics.mean(clock.hooks[1:])


def measure(repeats: int) -> dict[str, Any]:
    train, val = demo.digits(0)
    clean_loader = DataLoader(train, batch_size=256)
    bare: list[float] = []
    samples = {name: {"plain": [], "clean": []} for name in MEASUREMENTS}
    started = time.perf_counter()
    for _ in range(repeats):
        bare.append(run_once(None, train, val)[0])
        for name, measurement in MEASUREMENTS.items():
            samples[name]["plain"].append(run_once(measurement.make(None), train, val)[1])
            samples[name]["clean"].append(run_once(measurement.make(clean_loader), train, val)[1])
    epoch = statistics.median(bare)
    rows = []
    for name, measured in samples.items():
        plain, clean = statistics.median(measured["plain"]), statistics.median(measured["clean"])
        rows.append(
            {
                "callback": name,
                "clean_eval_ms": round((clean - plain) * 1e3, 1),
                "hooks_plain_ms": round(plain * 1e3, 1),
                "hooks_clean_ms": round(clean * 1e3, 1),
                "ratio_to_train_epoch": round((clean - plain) / epoch, 3),
                "note": MEASUREMENTS[name].note,
            }
        )
    return {
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "clean_rows": len(train),
        "train_epoch_ms": round(epoch * 1e3, 1),
        "rows": rows,
        "wall_s": round(time.perf_counter() - started, 1),
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"training epoch (bare): {result['train_epoch_ms']:.1f} ms; clean rows: "
          f"{result['clean_rows']}; threads: {result['threads']}")  # fmt: skip
    print(f"{'callback':<20}{'clean eval ms':>14}{'x epoch':>9}{'hooks ms':>10}{'plain ms':>10}")
    for row in result["rows"]:
        print(
            f"{row['callback']:<20}{row['clean_eval_ms']:14.1f}{row['ratio_to_train_epoch']:9.3f}"
            f"{row['hooks_clean_ms']:10.1f}{row['hooks_plain_ms']:10.1f}  {row['note']}"
        )


LINEAR_ONLINE = "linear online"
"""``tools/bench_overhead.py``'s configuration: the demo's linear probe without clean_loader."""


def probe_clean_cost(rows: list[dict[str, Any]], bare_train_s: float) -> dict[str, float]:
    """One clean evaluation of the demo's linear probe (ms) in ``bench_overhead``'s rows: its
    validation-epoch-start hook (where the clean rows are embedded and the probe trained) less
    that of :data:`LINEAR_ONLINE`; and its ratio to a bare training epoch."""
    start = {
        row["config"]: row["hook_ms_per_call"]["linear probe"]["on_validation_epoch_start"]
        for row in rows
        if row["config"] in ("linear probe", LINEAR_ONLINE)
    }
    clean_ms = start["linear probe"] - start[LINEAR_ONLINE]
    return {
        "probe_clean_eval_ms": round(clean_ms, 1),
        "probe_clean_eval_per_train_epoch": round(clean_ms / (bare_train_s * 1e3), 3),
    }


def print_probe_clean(result: dict[str, Any]) -> None:
    print(
        f"linear probe clean evaluation (1500 rows embedded, a fresh probe trained): "
        f"{result['probe_clean_eval_ms']:.1f} ms, "
        f"{result['probe_clean_eval_per_train_epoch']:.2f}x a bare training epoch"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="write the results as JSON to this path")
    args = parser.parse_args()
    result = measure(args.repeats)
    print_table(result)
    write_json(args.out, result)


if __name__ == "__main__":
    main()
