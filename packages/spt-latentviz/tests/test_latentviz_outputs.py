"""What LatentViz writes and logs (real CSV and W&B loggers), when it draws, and the inputs
it refuses before a fit gets far."""

from __future__ import annotations

import csv
import glob
import json
import os
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from spt_core.testing import captured_logs, quiet_trainer
from spt_latentviz import LatentViz, load_map, projection_mlp


class StepLosses(LatentViz):
    """LatentViz that keeps the epoch and value of every update's loss."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.losses: list[tuple[int, float]] = []

    def update_projection(self, trainer, pl_module):
        loss = super().update_projection(trainer, pl_module)
        if loss is not None:
            self.losses.append((trainer.current_epoch, loss.item()))
        return loss


def viz(**overrides) -> StepLosses:
    settings = {
        "name": "viz",
        "input": "embedding",
        "target": "label",
        "projection": projection_mlp(16, 32),
        "queue_length": 100,
        "update_interval": 1,
        "plot_interval": 1,
    }
    settings.update(overrides)
    return StepLosses(**settings)


def csv_rows(folder: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(folder / "metrics.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


# ------------------------------------------------------------------ logged names


def test_csv_logger_receives_the_documented_names_and_values(run_fit, blobs, tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    features, labels = blobs(120, 16, 3)
    callback = viz()
    logger = CSVLogger(tmp_path / "csv", name="", version=0)
    run_fit(
        [callback], features, labels, epochs=2, batch_size=20, logger=logger, log_every_n_steps=1
    )
    columns, rows = csv_rows(tmp_path / "csv" / "version_0")
    names = {c for c in columns if "viz" in c}
    assert names == {
        "train/viz_loss",
        "train/viz_loss_step",
        "eval/viz_trustworthiness",
        "eval/viz_knn_recall",
    }
    # Every update's loss per step, and the epoch means of those updates.
    steps = [float(r["train/viz_loss_step"]) for r in rows if r["train/viz_loss_step"]]
    assert steps == pytest.approx([loss for _, loss in callback.losses])
    epochs = {int(r["epoch"]): float(r["train/viz_loss"]) for r in rows if r["train/viz_loss"]}
    assert sorted(epochs) == [0, 1]
    for epoch, mean in epochs.items():
        losses = [loss for e, loss in callback.losses if e == epoch]
        assert mean == pytest.approx(sum(losses) / len(losses))


def test_step_losses_follow_log_every_n_steps(run_fit, blobs, tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    features, labels = blobs(120, 16, 3)
    callback = viz()
    logger = CSVLogger(tmp_path / "csv", name="", version=0)
    run_fit(
        [callback], features, labels, epochs=2, batch_size=10, logger=logger, log_every_n_steps=4
    )
    _, rows = csv_rows(tmp_path / "csv" / "version_0")
    logged_steps = [int(r["step"]) for r in rows if r["train/viz_loss_step"]]
    # 24 batches of 10 rows, one update each once the queue holds more than k=15 rows (from
    # the third batch on); Lightning writes steps 3, 7, 11, ... only.
    assert len(callback.losses) == 22
    assert logged_steps == [3, 7, 11, 15, 19, 23]


# ------------------------------------------------------------------ when maps are drawn


def test_maps_are_drawn_on_epochs_that_are_multiples_of_plot_interval_after_warmup(
    run_fit, blobs, tmp_path
):
    features, labels = blobs(120, 16, 3)
    callback = viz(warmup_epochs=1, plot_interval=2)
    run_fit([callback], features, labels, epochs=6, batch_size=20)
    names = sorted(n for n in os.listdir(tmp_path / "latent_viz_viz") if n.endswith(".npz"))
    # The seed's rule, and the fit's last epoch: a fit always ends on a map of its features.
    assert names == ["epoch_0002.npz", "epoch_0004.npz", "epoch_0005.npz"]


def test_a_warmup_longer_than_plot_interval_waits_for_the_next_multiple(run_fit, blobs, tmp_path):
    features, labels = blobs(120, 16, 3)
    callback = viz(warmup_epochs=3, plot_interval=2, update_interval=3)
    run_fit([callback], features, labels, epochs=5, batch_size=20, validate=False)
    names = sorted(n for n in os.listdir(tmp_path / "latent_viz_viz") if n.endswith(".npz"))
    assert names == ["epoch_0004.npz"]


# ------------------------------------------------------------------ W&B table


def wandb_records(path: Path) -> list:
    """Every record of an offline run's ``run-*.wandb`` file (a LevelDB log: a 7-byte W&B
    header, then 32 KiB blocks of records with 7-byte headers)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, block, chunk, records = 7, 32768, b"", []
    while position + 7 <= len(data):
        left = block - position % block
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if left < 7 or (kind == 0 and length == 0):  # block trailer or padding
            position += left
            continue
        chunk += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def wandb_history(run_dir: Path) -> list[dict]:
    """Every history row of a finished offline run, once its writer has written the run's
    ``exit`` record (``finish()`` may return while the wandb service still writes)."""
    (path,) = glob.glob(str(run_dir / "run-*.wandb"))
    for _ in range(600):
        records = wandb_records(Path(path))
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"{path} never received its exit record")
    return [
        {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for variable, value in {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(tmp_path / "wandb_dir"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb_data"),
    }.items():
        monkeypatch.setenv(variable, value)
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(save_dir=str(tmp_path), project="spt-latentviz-test", offline=True)
    yield logger
    logger.experiment.finish()


def test_wandb_logger_receives_the_seeds_table_and_epoch(run_fit, blobs, tmp_path, offline_wandb):
    features, labels = blobs(120, 16, 3)
    callback = viz(plot_interval=2)
    run_fit([callback], features, labels, epochs=3, batch_size=20, logger=offline_wandb)
    run_dir = Path(offline_wandb.experiment.dir).parent
    offline_wandb.experiment.finish()
    tables = [row for row in wandb_history(run_dir) if "viz/current_epoch" in row]
    assert [row["viz/current_epoch"] for row in tables] == [0, 2]
    for row in tables:
        epoch = row["viz/current_epoch"]
        assert row["viz/2d_latent_table/_type"] == "table-file"
        table = json.loads((run_dir / "files" / row["viz/2d_latent_table/path"]).read_text())
        assert table["columns"] == ["x", "y", "class"]
        saved = load_map(tmp_path / "latent_viz_viz" / f"epoch_{epoch:04d}.npz")
        data = np.array(table["data"])
        np.testing.assert_allclose(data[:, :2], saved["coordinates"], rtol=1e-6)
        assert [int(c) for c in data[:, 2]] == saved["labels"].tolist()
        assert all(isinstance(r[2], int) for r in table["data"])


def test_without_a_target_the_wandb_table_has_coordinates_only(
    run_fit, blobs, tmp_path, offline_wandb
):
    features, labels = blobs(120, 16, 3)
    run_fit([viz(target=None)], features, labels, epochs=1, batch_size=20, logger=offline_wandb)
    run_dir = Path(offline_wandb.experiment.dir).parent
    offline_wandb.experiment.finish()
    (row,) = [row for row in wandb_history(run_dir) if "viz/current_epoch" in row]
    table = json.loads((run_dir / "files" / row["viz/2d_latent_table/path"]).read_text())
    assert table["columns"] == ["x", "y"] and len(table["data"]) == 100


# ------------------------------------------------------------------ bad names, folders, labels


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"name": "map\x00"}, "name must not contain a NUL"),
        ({"name": "m" * 300}, "name may take 244 bytes, got 300"),
        ({"name": "é" * 123}, "name may take 244 bytes, got 246"),
        ({"name": "m" * 300, "save_dir": "maps\x00"}, "save_dir must not contain a NUL"),
    ],
)
def test_names_and_folders_that_cannot_be_written_are_refused_at_construction(overrides, match):
    with pytest.raises(ValueError, match=r"StepLosses\[name=.*\]: .*" + match):
        viz(**overrides)


def test_a_long_name_is_fine_when_save_dir_is_given(run_fit, blobs, tmp_path):
    features, labels = blobs(120, 16, 3)
    callback = viz(name="m" * 300, save_dir=tmp_path / "maps")
    run_fit([callback], features, labels, batch_size=20)
    assert os.listdir(tmp_path / "maps")
    edge = viz(name="m" * 244)
    run_fit([edge], features, labels, batch_size=20, root=tmp_path / "edge")
    assert os.listdir(tmp_path / "edge" / f"latent_viz_{'m' * 244}")


def test_a_save_dir_that_cannot_be_written_fails_when_fit_starts(run_fit, blobs, tmp_path):
    features, labels = blobs(120, 16, 3)
    (tmp_path / "a_file").write_text("not a folder")
    callback = viz(save_dir=tmp_path / "a_file" / "maps")
    with pytest.raises(ValueError, match=r"StepLosses\[name=viz\]: save_dir .*a_file/maps"):
        run_fit([callback], features, labels, batch_size=20)
    assert callback.train_batches == 0 and callback.optimizer_steps == 0


@pytest.mark.parametrize("as_array", [False, True])
def test_string_labels_are_refused_at_the_first_batch(run_fit, blobs, backbone, as_array):
    class Named(backbone):
        def _step(self, batch):
            out = super()._step(batch)
            names = [f"class {int(c)}" for c in out["label"]]
            out["label"] = np.array(names) if as_array else names
            return out

    features, labels = blobs(120, 16, 3)
    callback = viz()
    with pytest.raises(TypeError, match=r"StepLosses\[name=viz\]: target 'label' holds strings"):
        run_fit([callback], features, labels, batch_size=20, model=Named(16))
    assert callback.train_batches == 0


# ------------------------------------------------------------------ trainer.validate


def test_validate_after_fit_maps_the_queue_the_fit_filled(run_fit, blobs, backbone, tmp_path):
    from torch.utils.data import DataLoader

    features, labels = blobs(120, 16, 3)
    callback = viz(plot_interval=1)
    trainer = run_fit([callback], features, labels, epochs=2, batch_size=20)
    rows = DataLoader(
        [{"x": f, "label": y} for f, y in zip(features, labels, strict=True)], batch_size=20
    )
    (same,) = trainer.validate(trainer.lightning_module, rows, verbose=False)
    assert set(same) == {"eval/viz_trustworthiness", "eval/viz_knn_recall"}
    saved = load_map(tmp_path / "latent_viz_viz" / "epoch_0002.npz")
    assert float(saved["trustworthiness"]) == pytest.approx(same["eval/viz_trustworthiness"])
    # Another Trainer, without the fit's queues among its callbacks: the same map.
    other = quiet_trainer(callbacks=[callback], default_root_dir=tmp_path / "other")
    callback.last_plot_epoch = None
    (again,) = other.validate(trainer.lightning_module, rows, verbose=False)
    assert again == pytest.approx(same)


def test_validate_before_any_fit_says_there_is_no_map(blobs, backbone, tmp_path):
    from torch.utils.data import DataLoader

    features, labels = blobs(40, 16, 3)
    rows = DataLoader(
        [{"x": f, "label": y} for f, y in zip(features, labels, strict=True)], batch_size=20
    )
    with captured_logs(level="DEBUG", format="{message}") as lines:
        trainer = quiet_trainer(callbacks=[viz()])
        (logged,) = trainer.validate(backbone(16), rows, verbose=False)
    assert logged == {}
    assert sum("no map: the queues are filled by a fit" in line for line in lines) == 1
