"""The root README's "Logged names" table against what a real CSVLogger receives.

Each row's callback, built as its first cell says (``OnlineKNN(name=n, k=(5, 10))``), runs
alone on a short ``Trainer.fit`` (two epochs), then ``validate`` and ``test`` on the same
Trainer. The names the CSV file holds must be exactly the names of the row, with ``{n}`` the
callback's name and ``{metric}`` its metric's name: the training column's names appear during
``fit``, and ``validate`` / ``test`` log only names of the validation / test column.
"""

from __future__ import annotations

import csv
import re
import sys
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

sys.path.insert(0, str(Path(__file__).parent / "scenarios"))  # _common, shared with scenarios
from _common import DictDataset, Encoder, blobs, loader

from spt_knn import OnlineKNN
from spt_latentviz import LatentViz, projection_mlp
from spt_metrics import MetricsCallback
from spt_probe import OnlineProbe

README = Path(__file__).resolve().parents[1] / "README.md"
NAME, METRIC = "cb", "accuracy"
IN_DIM, EMBED_DIM, CLASSES = 4, 8, 3


def logged_names_table(text: str) -> dict[str, tuple[set[str], set[str]]]:
    """The "Logged names" table: the row's callback (its first cell's code) -> (training names,
    validation/test names), placeholders filled with :data:`NAME` and :data:`METRIC`."""
    section = text.split("## Logged names", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        callback = re.match(r"`([^`]+)`", cells[0]).group(1)
        rows[callback] = (names_in(cells[1]), names_in(cells[2]))
    return rows


def names_in(cell: str) -> set[str]:
    """The logged names of a table cell: its backticked words that hold a ``/``."""
    names = {word for word in re.findall(r"`([^`]+)`", cell) if "/" in word}
    return {name.replace("{n}", NAME).replace("{metric}", METRIC) for name in names}


def accuracy() -> MulticlassAccuracy:
    return MulticlassAccuracy(CLASSES, validate_args=False)


def knn(clean: bool = False, **options) -> Callable[[Path, object], L.Callback]:
    """An OnlineKNN factory; with ``clean`` it also scores against the labelled loader."""
    return lambda tmp, labelled: OnlineKNN(
        NAME,
        input="embedding",
        target="label",
        queue_length=64,
        metrics={METRIC: accuracy()},
        num_classes=CLASSES,
        **{"k": 5, **options, **({"clean_loader": labelled} if clean else {})},
    )


def probe(clean: bool = False, **options) -> Callable[[Path, object], L.Callback]:
    """An OnlineProbe factory; with ``clean`` it also trains a clean probe (two passes)."""
    return lambda tmp, labelled: OnlineProbe(
        name=NAME,
        input="embedding",
        target="label",
        probe=nn.Linear(EMBED_DIM, CLASSES),
        metrics={METRIC: accuracy()},
        **options,
        **({"clean_loader": labelled, "clean_epochs": 2} if clean else {}),
    )


CALLBACKS: dict[str, Callable[[Path, object], L.Callback]] = {
    "OnlineKNN(name=n)": knn(),
    "OnlineKNN(name=n, k=(5, 10))": knn(k=(5, 10)),
    "OnlineKNN(name=n, k=5, temperature=(0.07, 0.1))": knn(temperature=(0.07, 0.1)),
    "OnlineKNN(name=n, clean_loader=labelled)": knn(clean=True),
    "OnlineProbe(name=n)": probe(),
    "OnlineProbe(name=n, clean_loader=labelled)": probe(clean=True),
    "LatentViz(name=n)": lambda tmp, labelled: LatentViz(
        NAME,
        "embedding",
        "label",
        projection_mlp(EMBED_DIM, 16),
        queue_length=64,
        k_neighbors=5,
        update_interval=1,
        plot_interval=1,
        save_dir=tmp / "maps",
    ),
    # The encoder's 8 embedding columns stand for logits: the metric only needs (preds, target).
    "MetricsCallback": lambda tmp, labelled: MetricsCallback(
        {METRIC: MulticlassAccuracy(EMBED_DIM, validate_args=False)},
        needs={"preds": "embedding", "target": "label"},
        on_test_end=True,
        name=NAME,
    ),
}


def csv_rows(trainer: L.Trainer) -> list[dict[str, str]]:
    with open(Path(trainer.logger.log_dir) / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def names_of(rows: list[dict[str, str]]) -> set[str]:
    """Every metric name with a value in ``rows`` (the CSV's own columns left out)."""
    return {key for row in rows for key, value in row.items() if value != ""} - {"epoch", "step"}


def logged_per_stage(
    make: Callable[[Path, object], L.Callback], tmp_path: Path
) -> dict[str, set[str]]:
    """The names the CSVLogger received in ``fit``, ``validate`` and ``test``."""
    L.seed_everything(0, verbose=False)
    features, labels = blobs(96, IN_DIM, CLASSES)
    train = loader(DictDataset(features[:64], labels[:64]), 8, shuffle=True)
    held_out = loader(DictDataset(features[64:], labels[64:]), 8)
    labelled = loader(DictDataset(features[:64], labels[:64]), 16)
    callback = make(tmp_path, labelled)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=L.pytorch.loggers.CSVLogger(tmp_path, name="logs"),
        callbacks=[callback],
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    model = Encoder(IN_DIM, EMBED_DIM)
    stages = {
        "fit": lambda: trainer.fit(model, train, held_out),
        "validate": lambda: trainer.validate(model, held_out, verbose=False),
        "test": lambda: trainer.test(model, held_out, verbose=False),
    }
    logged, seen = {}, 0
    for stage, run in stages.items():
        run()
        rows = csv_rows(trainer)
        logged[stage], seen = names_of(rows[seen:]), len(rows)
    return logged


def test_the_table_has_a_row_for_every_callback():
    assert set(logged_names_table(README.read_text())) == set(CALLBACKS)


@pytest.mark.parametrize("callback", sorted(CALLBACKS))
def test_logged_names_match_the_readme_table(callback, tmp_path):
    training, evaluation = logged_names_table(README.read_text())[callback]
    logged = logged_per_stage(CALLBACKS[callback], tmp_path)
    everything = logged["fit"] | logged["validate"] | logged["test"]
    assert everything == training | evaluation, (
        f"{callback}: logged but not in the README: {sorted(everything - training - evaluation)}"
        f"; in the README but never logged: {sorted(training | evaluation - everything)}"
    )
    assert training <= logged["fit"], sorted(training - logged["fit"])
    assert logged["validate"] <= evaluation, sorted(logged["validate"] - evaluation)
    assert logged["test"] <= evaluation, sorted(logged["test"] - evaluation)
    assert logged["validate"], f"{callback}: trainer.validate logged nothing"
