"""The demo's final tables: a logger that keeps each epoch's validation values, and the print.

Kept apart from ``demo.py`` (which imports it) so that each module stays short.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger


class History(Logger):
    """A logger that keeps, by epoch, the validation values it receives, for the final table.

    Only what was logged in an epoch is kept for that epoch (``trainer.callback_metrics``
    would repeat the last map trustworthiness on the epochs where none was measured).
    """

    #: The two tables the demo prints: (column title, logged name).
    ACCURACY = (
        ("kNN", "eval/knn_accuracy"),
        ("kNN cl.", "eval/knn_clean_accuracy"),
        ("linear", "eval/linear_accuracy"),
        ("lin. cl.", "eval/linear_clean_accuracy"),
        ("MLP", "eval/mlp_accuracy"),
        ("map", "eval/latent_trustworthiness"),
    )
    LABEL_FREE = (
        ("RankMe", "rankme/val"),
        ("eff.rank", "effective_rank/val"),
        ("dims99", "dims99/val"),
        ("std", "std/val"),
        ("cosine", "cosine/val"),
        ("align", "alignment/train"),
        ("unif", "uniformity/train"),
        ("LiDAR", "lidar/train"),
    )

    def __init__(self) -> None:
        super().__init__()
        self.epochs: dict[int, dict[str, float]] = {}

    @property
    def name(self) -> str:
        return "history"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """The table shows no hyperparameters: nothing to keep."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        values = {key: float(value) for key, value in metrics.items() if key != "epoch"}
        if values and "epoch" in metrics:
            self.epochs.setdefault(int(metrics["epoch"]), {}).update(values)


def table(history: History, columns: tuple[tuple[str, str], ...]) -> list[str]:
    """One line per validated epoch; a value not logged that epoch is left blank (the map is
    scored only where it is drawn)."""
    lines = [f"{'epoch':>5}" + "".join(f"{title:>9}" for title, _ in columns)]
    for epoch, row in sorted(history.epochs.items()):
        if not any(key.startswith("eval/") for key in row):
            continue  # an epoch without validation
        cells = (f"{row[key]:9.3f}" if key in row else " " * 9 for _, key in columns)
        lines.append((f"{epoch:>5}" + "".join(cells)).rstrip())
    return lines


def report(history: History, out: Path, seconds: float) -> None:
    """Print the accuracies (training queue and clean variants, probes, map trustworthiness)
    and the label-free measures, one row per validated epoch."""
    print("\n" + "\n".join(table(history, History.ACCURACY)))
    print("\n" + "\n".join(table(history, History.LABEL_FREE)))
    print(
        f"\n{seconds:.0f} s. Outputs in {out}/: logs/ (CSV, TensorBoard), latent_map/, checkpoints/"
    )
