"""LatentViz under two-process DDP on CPU (gloo): one projection, rank 0 draws, exact resume.

Both checks share the runs (a DDP start costs seconds): a straight 3-epoch fit that saves a
checkpoint after every epoch, and a fit resumed from the checkpoint of epoch 2.
"""

import pytest
import torch

pytestmark = pytest.mark.ddp


def assert_same_projection(first, second):
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0)


def check_one_projection_and_rank_0_draws_the_gathered_queue(ranks):
    first, second = ranks
    # Gradients are averaged: the projection is identical, step for step, on both ranks.
    assert first["optimizer_steps"] == second["optimizer_steps"] == 12
    assert_same_projection(first["projection"], second["projection"])
    # Each rank trains on its own rows; the map is drawn from every rank's rows, once each.
    assert not torch.equal(first["own_rows"], second["own_rows"])
    gathered = torch.cat([first["own_rows"], second["own_rows"]])
    shared = {k: v for k, v in first["logged"].items() if k != "train/viz_loss_step"}
    for rank in ranks:
        assert torch.equal(rank["snapshot"], gathered)
        assert {k: v for k, v in rank["logged"].items() if k != "train/viz_loss_step"} == shared
    # The loss is logged as OnlineProbe logs it: each rank's last update's loss (logged every
    # 2 steps, as each update), and the mean over both ranks' updates of the last epoch under
    # the plain name.
    assert set(first["logged"]) == {
        "train/viz_loss",
        "train/viz_loss_step",
        "eval/viz_trustworthiness",
        "eval/viz_knn_recall",
    }
    last = [loss for rank in ranks for epoch, loss in rank["losses"] if epoch == 2]
    assert len(last) == 8
    assert first["logged"]["train/viz_loss"] == pytest.approx(sum(last) / len(last))
    for rank in ranks:
        assert rank["logged"]["train/viz_loss_step"] == pytest.approx(rank["losses"][-1][1])
    assert 0.0 <= first["logged"]["eval/viz_trustworthiness"] <= 1.0
    assert 0.0 <= first["logged"]["eval/viz_knn_recall"] <= 1.0
    # Only rank 0 writes, one file per plot; its coordinates are the projected gathered queue.
    assert second["files"] == []
    assert {"epoch_0000.npz", "epoch_0001.npz", "epoch_0002.npz"} <= set(first["files"])
    saved = first["saved"]
    assert saved["coordinates"].shape == (64, 2)
    torch.testing.assert_close(torch.from_numpy(saved["coordinates"]), first["projected_snapshot"])
    assert saved["labels"].tolist() == first["label_snapshot"].tolist()
    logged_score = first["logged"]["eval/viz_trustworthiness"]
    assert float(saved["trustworthiness"]) == pytest.approx(logged_score)


def test_ddp_shares_one_projection_draws_on_rank_0_and_resumes_exactly(run_scenario, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    straight = run_scenario(
        "latentviz_ddp", devices=2, epochs=3, queue_length=32, checkpoint_dir=str(checkpoints)
    )
    check_one_projection_and_rank_0_draws_the_gathered_queue(straight)
    # state_dict() holds this rank's generator; the checkpoint holds both ranks', gathered
    # while it was saved.
    assert straight[1]["own_generators"].shape[0] == 1
    saved = torch.load(checkpoints / "epoch=1.ckpt", weights_only=False)
    generators = saved["callbacks"]["RecordingViz[name=viz]"]["latent_viz"]["generators"]
    assert generators.shape[0] == 2 and not torch.equal(generators[0], generators[1])
    resumed = run_scenario(
        "latentviz_ddp",
        devices=2,
        epochs=3,
        queue_length=32,
        resume=str(checkpoints / "epoch=1.ckpt"),
    )
    # Projection, optimizer, counters and each rank's negative-sampling stream come back.
    for before, after in zip(straight, resumed, strict=True):
        assert after["optimizer_steps"] == before["optimizer_steps"]
        assert after["train_batches"] == before["train_batches"]
        assert_same_projection(before["projection"], after["projection"])
    # The resumed run's folder: its one map, and its animation (rank 0 only).
    assert resumed[0]["files"] == ["epoch_0002.npz", "epoch_0002.png", "maps.gif"]
    assert "maps.gif" in straight[0]["files"] and resumed[1]["files"] == []
    coordinates = [torch.from_numpy(run[0]["saved"]["coordinates"]) for run in (straight, resumed)]
    torch.testing.assert_close(*coordinates)
