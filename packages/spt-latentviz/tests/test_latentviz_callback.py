"""LatentViz inside real (small, CPU) Trainers."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger

from spt_core import callbacks_modules
from spt_core.testing import Backbone, captured_logs
from spt_latentviz import LatentViz, knn_recall, load_map, plotting, projection_mlp

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class RecordingViz(LatentViz):
    """LatentViz that keeps every training loss."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.losses: list[float] = []

    def update_projection(self, trainer, pl_module):
        loss = super().update_projection(trainer, pl_module)
        if loss is not None:
            self.losses.append(loss.item())
        return loss


class ImageLogger(Logger):
    """A Lightning logger that takes images the way WandbLogger does (``log_image``)."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[tuple[str, list, int]] = []

    @property
    def name(self) -> str:
        return "images"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_image(self, key: str, images: list, step: int | None = None) -> None:
        self.images.append((key, images, step))


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking the signature."""
    header = path.read_bytes()[:24]
    assert header[:8] == PNG_SIGNATURE
    assert header[12:16] == b"IHDR"
    return struct.unpack(">II", header[16:24])


def viz(**overrides) -> RecordingViz:
    settings = {
        "name": "viz",
        "input": "embedding",
        "target": "label",
        "projection": projection_mlp(16, 64),
        "queue_length": 200,
        "update_interval": 1,
    }
    settings.update(overrides)
    return RecordingViz(**settings)


@pytest.fixture(scope="module")
def clustered(tmp_path_factory, blobs, fit_trainer):
    """One fit on five far-apart clusters, shared by several tests (it is the slow part)."""
    torch.manual_seed(0)
    features, labels = blobs(400, 16, 5)
    root = tmp_path_factory.mktemp("clustered")
    callback = viz(plot_interval=3)
    images = ImageLogger()
    trainer = fit_trainer(
        [callback], features, labels, root, epochs=4, batch_size=40, logger=images
    )
    return callback, trainer, features, labels, root, images


def test_loss_decreases_and_clusters_stay_apart(clustered):
    callback, trainer, features, labels, *_ = clustered
    losses = callback.losses
    assert len(losses) == callback.optimizer_steps > 30
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    z = callback.project(features)
    # Every point's nearest 2D neighbour belongs to its own cluster...
    nearest = torch.cdist(z, z).fill_diagonal_(torch.inf).argmin(dim=1)
    assert (labels[nearest] == labels).float().mean() > 0.97
    # ...and the map keeps far more of the true neighbours than chance (k / (N - 1) = 0.04).
    assert knn_recall(features, z, 15).item() > 0.3
    logged = trainer.callback_metrics
    assert logged["eval/viz_knn_recall"] > 0.3
    assert logged["eval/viz_trustworthiness"] > 0.9
    assert "train/viz_loss" in logged


def test_maps_are_written_on_schedule_with_valid_pictures(clustered):
    pytest.importorskip("matplotlib")
    *_, root, images = clustered
    folder = root / "latent_viz_viz"
    assert sorted(os.listdir(folder)) == [
        "epoch_0000.npz",
        "epoch_0000.png",
        "epoch_0003.npz",
        "epoch_0003.png",
        "maps.gif",
    ]
    for name in ("epoch_0000.png", "epoch_0003.png"):
        assert png_size(folder / name) == (700, 600)
    from matplotlib.image import imread

    picture = imread(folder / "epoch_0003.png")
    assert picture.shape == (600, 700, 4)
    assert picture[..., :3].std() > 0.05  # something was drawn
    assert [key for key, _, _ in images.images] == ["eval/viz_map", "eval/viz_map"]
    for _, logged, _ in images.images:
        assert logged[0].shape == (600, 700, 3) and logged[0].dtype.name == "uint8"
    assert [step for *_, step in images.images] == [10, 40]  # after epochs 0 and 3


def test_npz_round_trips_the_projected_queue(clustered):
    callback, trainer, *_, root, _ = clustered
    saved = load_map(root / "latent_viz_viz" / "epoch_0003.npz")
    queue, label_queue = callback._input_queue, callback._target_queue
    expected = callback.project(queue.read(200))
    torch.testing.assert_close(torch.from_numpy(saved["coordinates"]), expected)
    assert saved["labels"].tolist() == label_queue.read(200).tolist()
    assert int(saved["epoch"]) == 3
    logged = trainer.callback_metrics
    assert float(saved["trustworthiness"]) == pytest.approx(
        float(logged["eval/viz_trustworthiness"])
    )
    assert float(saved["knn_recall"]) == pytest.approx(float(logged["eval/viz_knn_recall"]))


def test_no_gradient_reaches_the_backbone(run_fit, blobs):
    backward_passes: list[torch.Tensor] = []

    def outputs(batch, module):
        embedding = module.encoder(batch["x"])  # a trained encoder's output, with its graph
        if embedding.requires_grad:  # training steps
            embedding.register_hook(backward_passes.append)
        return {"embedding": embedding, "label": batch["label"]}

    features, labels = blobs(120, 16, 3)
    model = Backbone(16, width=16, outputs=outputs)
    callback = viz(queue_length=100, plot_interval=1)
    run_fit([callback], features, labels, batch_size=20, model=model)
    assert callback.optimizer_steps > 0
    assert backward_passes == []  # the backbone's own loss does not use this output either
    assert callbacks_modules(model)["viz"] is callback.projection
    assert not any(key.startswith("callbacks") for key in model.state_dict())


def test_target_none_draws_one_colour(run_fit, blobs, tmp_path):
    features, labels = blobs(120, 16, 3)
    callback = viz(target=None, queue_length=100, plot_interval=1)
    run_fit([callback], features, labels, epochs=1, batch_size=20)
    saved = load_map(tmp_path / "latent_viz_viz" / "epoch_0000.npz")
    assert "labels" not in saved and saved["coordinates"].shape == (100, 2)
    if plotting.has_matplotlib():
        assert png_size(tmp_path / "latent_viz_viz" / "epoch_0000.png") == (700, 600)


def test_without_matplotlib_only_the_npz_and_one_hint(run_fit, blobs, tmp_path, monkeypatch):
    monkeypatch.setattr(plotting, "has_matplotlib", lambda: False)
    with captured_logs(level="DEBUG", format="{message}") as lines:
        features, labels = blobs(120, 16, 3)
        callback = viz(queue_length=100, plot_interval=1, save_dir=tmp_path / "maps")
        run_fit([callback], features, labels, epochs=2, batch_size=20)
    assert sorted(os.listdir(tmp_path / "maps")) == ["epoch_0000.npz", "epoch_0001.npz"]
    assert sum("spt-latentviz[plot]" in line for line in lines) == 1


def test_warmup_delays_training_and_plots_and_the_sanity_check_draws_nothing(
    run_fit, blobs, tmp_path
):
    features, labels = blobs(120, 16, 3)
    callback = viz(queue_length=100, warmup_epochs=2, plot_interval=2, update_interval=2)
    run_fit([callback], features, labels, epochs=5, batch_size=20, num_sanity_val_steps=2)
    # 6 batches per epoch, counted from epoch 2 on; one update every 2 batches.
    assert callback.train_batches == 18
    assert callback.optimizer_steps == 9
    names = sorted(os.listdir(tmp_path / "latent_viz_viz"))
    assert [n for n in names if n.endswith(".npz")] == ["epoch_0002.npz", "epoch_0004.npz"]


def test_without_validation_the_map_is_drawn_at_the_end_of_the_training_epoch(
    run_fit, blobs, tmp_path
):
    features, labels = blobs(120, 16, 3)
    callback = viz(queue_length=100, plot_interval=1)
    trainer = run_fit([callback], features, labels, epochs=2, batch_size=20, validate=False)
    saved = load_map(tmp_path / "latent_viz_viz" / "epoch_0001.npz")
    assert saved["coordinates"].shape == (100, 2)
    assert "eval/viz_trustworthiness" in trainer.callback_metrics


def test_tensorboard_receives_the_picture(run_fit, blobs, tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("tensorboard")
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    features, labels = blobs(120, 16, 3)
    board = TensorBoardLogger(tmp_path / "tb", name="", version=0)
    run_fit([viz(queue_length=100)], features, labels, epochs=1, batch_size=20, logger=board)
    events = EventAccumulator(str(tmp_path / "tb" / "version_0"))
    events.Reload()
    assert events.Tags()["images"] == ["eval/viz_map"]
    (image,) = events.Images("eval/viz_map")
    assert (image.width, image.height) == (700, 600)


def test_checkpoint_resume_restores_projection_and_optimizer(run_fit, blobs, tmp_path):
    features, labels = blobs(200, 16, 4)

    # A map every epoch: the two-epoch fit draws its last epoch, as the straight fit does.
    def fresh() -> RecordingViz:
        torch.manual_seed(0)
        return viz(queue_length=100, plot_interval=1)

    straight = fresh()
    run_fit([straight], features, labels, epochs=3, batch_size=40, root=tmp_path / "a")
    first = fresh()
    trainer = run_fit([first], features, labels, epochs=2, batch_size=40, root=tmp_path / "b")
    checkpoint = tmp_path / "two_epochs.ckpt"
    trainer.save_checkpoint(checkpoint)
    state = torch.load(checkpoint, weights_only=False)["callbacks"][first.state_key]
    assert state["optimizer_steps"] == first.optimizer_steps == 9  # batch 0: empty queue
    torch.manual_seed(123)  # a different initial projection, overwritten by the checkpoint
    resumed = viz(queue_length=100, plot_interval=1)
    run_fit(
        [resumed],
        features,
        labels,
        epochs=3,
        batch_size=40,
        root=tmp_path / "c",
        ckpt_path=str(checkpoint),
    )
    assert resumed.optimizer_steps == straight.optimizer_steps == 14
    assert resumed.train_batches == straight.train_batches
    for key, value in straight.projection.state_dict().items():
        torch.testing.assert_close(resumed.projection.state_dict()[key], value)
    mine, theirs = resumed.optimizer.state_dict(), straight.optimizer.state_dict()
    for slot, values in theirs["state"].items():
        for name, tensor in values.items():
            torch.testing.assert_close(mine["state"][slot][name], tensor)
    assert resumed.losses == pytest.approx(straight.losses[-len(resumed.losses) :])


LAST_BATCH_CASES = {
    "validated": ({}, True),
    "no_update_that_epoch": ({"update_interval": 6}, True),  # 5 batches per epoch
    "warm_up": ({"warmup_epochs": 1}, True),
    "not_validated": ({"accumulate_grad_batches": 3}, False),  # the map follows the flush
}


@pytest.mark.parametrize("case", LAST_BATCH_CASES)
def test_a_checkpoint_at_an_epochs_last_batch_replays_the_skipped_map_and_epoch_end(
    run_fit, blobs, tmp_path, case
):
    """Written at epoch 0's last batch (5 of 5): Lightning resumes in epoch 1 without that
    epoch's validation and ``on_train_epoch_end``. LatentViz replays them (the due map, the
    epoch scheduler's step, the flush of an unfinished window, in the uninterrupted order) and
    drops the epoch's loss, so it trains on as the uninterrupted fit does."""
    features, labels = blobs(200, 16, 4)
    options, validate = LAST_BATCH_CASES[case]
    scheduler = {"type": "StepLR", "step_size": 1, "gamma": 0.5, "interval": "epoch"}

    def fit(resume=None) -> RecordingViz:
        torch.manual_seed(0)
        callback = viz(queue_length=100, plot_interval=1, scheduler=scheduler, **options)
        saver = ModelCheckpoint(tmp_path, "{step}", every_n_train_steps=5, save_top_k=-1)
        root = tmp_path / ("resumed" if resume else "straight")
        run_fit([callback, saver], features, labels, epochs=3, batch_size=40, root=root,
                ckpt_path=resume, enable_checkpointing=True, validate=validate)  # fmt: skip
        return callback

    straight = fit()
    resumed = fit(str(tmp_path / "step=5.ckpt"))
    assert resumed.optimizer_steps == straight.optimizer_steps
    assert resumed.scheduler.state_dict() == straight.scheduler.state_dict()
    for key, value in straight.projection.state_dict().items():
        assert torch.equal(resumed.projection.state_dict()[key], value), key
    assert resumed.losses == straight.losses[-len(resumed.losses) :]


def test_features_with_extra_dimensions_are_flattened(run_fit, blobs, backbone):
    features, labels = blobs(120, 16, 3)
    callback = viz(queue_length=100, input_dim=(2, 8))
    run_fit([callback], features, labels, batch_size=20, model=backbone(16, shape=(2, 8)))
    assert callback.optimizer_steps > 0
    assert callback.project(features.reshape(-1, 2, 8)).shape == (120, 2)


def test_a_projection_that_does_not_map_to_2d_is_refused(run_fit, blobs):
    features, labels = blobs(120, 16, 3)
    with pytest.raises(ValueError, match=r"shape \(\d+, 2\)"):
        run_fit([viz(projection=torch.nn.Linear(16, 3), queue_length=100)], features, labels)


def test_features_that_do_not_fit_the_projection_name_both_sizes(run_fit, blobs):
    features, labels = blobs(120, 16, 3)
    match = r"RecordingViz\[name=viz\]: 'embedding' has 16 features per row, but the projection's "
    with pytest.raises(ValueError, match=match + "first layer takes 8"):
        run_fit([viz(projection=projection_mlp(8), queue_length=100)], features, labels)


def test_a_missing_key_names_the_callback_that_reads_the_queue(run_fit, blobs):
    features, labels = blobs(120, 16, 3)
    match = (
        r"OnlineQueue\[name=feats\] \(filled for RecordingViz\[name=viz\]\) needs the key 'feats'"
    )
    with pytest.raises(KeyError, match=match):
        run_fit([viz(input="feats", queue_length=100)], features, labels)


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"input": ""}, ValueError, "input"),
        ({"input": 3}, TypeError, "input"),
        ({"target": 3}, TypeError, "target"),
        ({"target": ""}, ValueError, "target"),
        ({"queue_length": 0}, ValueError, "queue_length"),
        ({"queue_length": 30, "k_neighbors": 15}, ValueError, "2 \\* k_neighbors"),
        ({"k_neighbors": 0}, ValueError, "k_neighbors"),
        ({"k_neighbors": 5.0}, TypeError, "k_neighbors"),
        ({"n_negatives": 0}, ValueError, "n_negatives"),
        ({"update_interval": 0}, ValueError, "update_interval"),
        ({"warmup_epochs": -1}, ValueError, "warmup_epochs"),
        ({"plot_interval": 1.5}, TypeError, "plot_interval"),
        ({"distance_metric": "hamming"}, ValueError, "distance_metric"),
        ({"save_dir": 3}, TypeError, "save_dir"),
        ({"input_dim": (4, 0)}, ValueError, "input_dim"),
        ({"input_dim": "16"}, TypeError, "input_dim"),
        ({"projection": 3}, TypeError, "projection must be"),
        ({"optimizer": {"type": "AdamW", "lrr": 1.0}}, TypeError, "lrr"),
        ({"accumulate_grad_batches": 0}, ValueError, "accumulate_grad_batches"),
    ],
)
def test_constructor_validates_arguments(overrides, error, match):
    with pytest.raises(error, match=match) as caught:
        viz(**overrides)
    assert str(caught.value).startswith("RecordingViz[name=viz]: ")


def test_default_optimizer_is_adamw_with_the_measured_learning_rate(run_fit, blobs):
    features, labels = blobs(120, 16, 3)
    callback = viz(queue_length=100)
    run_fit([callback], features, labels, batch_size=20)
    assert type(callback.optimizer).__name__ == "AdamW"
    assert callback.optimizer.defaults["lr"] == 1e-2
    assert callback.optimizer.defaults["weight_decay"] == 1e-2


def test_rows_with_non_finite_values_are_left_out(
    run_fit, blobs, backbone, queues_holding, tmp_path
):
    features, labels = blobs(120, 16, 3)
    features[::10, 3] = float("nan")
    callback = viz(queue_length=120, plot_interval=1)
    queues = queues_holding(features, labels)
    run_fit(
        [callback, *queues],
        features[:40],
        labels[:40],
        batch_size=10,
        model=backbone(16, emit_rows=False),
    )
    assert callback.optimizer_steps == 4
    assert all(torch.isfinite(p).all() for p in callback.projection.parameters())
    saved = load_map(tmp_path / "latent_viz_viz" / "epoch_0000.npz")
    assert saved["coordinates"].shape == (108, 2)
    assert torch.isfinite(torch.from_numpy(saved["coordinates"])).all()
    kept = torch.isfinite(features).all(dim=1)
    assert saved["labels"].tolist() == labels[kept].tolist()


def test_a_rank_without_enough_finite_rows_still_steps_with_a_zero_gradient(
    run_fit, blobs, backbone, queues_holding
):
    features, labels = blobs(120, 16, 3)
    features[:] = float("inf")
    projection = projection_mlp(16, 64)
    before = [p.detach().clone() for p in projection.parameters()]
    callback = viz(projection=projection, queue_length=120, optimizer={"type": "SGD", "lr": 0.1})
    queues = queues_holding(features, labels)
    run_fit(
        [callback, *queues],
        features[:30],
        labels[:30],
        batch_size=10,
        model=backbone(16, emit_rows=False),
    )
    # Every update still steps (under DDP the other ranks wait for this one), changing nothing.
    assert callback.optimizer_steps == 3
    for old, new in zip(before, callback.projection.parameters(), strict=True):
        assert torch.equal(old, new)
