"""MetricsCallback under 2-process DDP on CPU equals one process over the same rows."""

import numpy as np
import pytest
import torch


def median_gap(score, target):
    return float(np.median(score[target == 1]) - np.median(score[target == 0]))


def auroc(score, target):
    """Probability that a positive outranks a negative (ties count half)."""
    pos, neg = score[target == 1][:, None], score[target == 0][None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def hit_rate(score, target):
    return float(((score > 0.5) == (target == 1)).mean())


@pytest.mark.ddp
def test_ddp_exact_and_per_step_values_equal_one_process_over_uneven_ranks(run_scenario):
    (single,) = run_scenario("metrics_ddp", devices=1)
    ranks = run_scenario("metrics_ddp", devices=2)
    score, target = single["train"]
    val_score, val_target = single["val"]
    expected = {
        "auroc/train": auroc(score, target),
        "gap/train": median_gap(score, target),
        "hit/train": hit_rate(score, target),
        "auroc/val/dataloader_idx_0": auroc(val_score, val_target),
        "gap/val/dataloader_idx_1": median_gap(val_score, val_target),
        "hit/val/dataloader_idx_1": hit_rate(val_score, val_target),
    }
    for name, value in expected.items():
        assert single["logged"][name] == pytest.approx(value, abs=1e-6), name
    assert set(single["logged"]) == {
        *(f"{m}/train" for m in ("auroc", "gap", "hit")),
        *(f"{m}/val/dataloader_idx_{i}" for m in ("auroc", "gap", "hit") for i in (0, 1)),
    }
    for result in ranks:
        assert result["logged"].keys() == single["logged"].keys()
        for name, value in single["logged"].items():
            assert result["logged"][name] == pytest.approx(value, abs=1e-6), name


@pytest.mark.ddp
def test_ddp_checkpoint_holds_every_ranks_part_of_the_open_window(run_scenario, tmp_path):
    path = str(tmp_path / "ddp.ckpt")
    ranks = run_scenario("metrics_ddp", devices=2, every_n_train_steps=4, save=path)
    callbacks = torch.load(path, weights_only=False)["callbacks"]
    score, _ = ranks[0]["train"]
    exact = callbacks["MetricsCallback[name=exact]"]["train_window"]
    assert exact["batches"] == 3  # 3 steps per rank, a window of 4: still open
    (rows,) = exact["metrics"]["gap"]["kwarg_score"]  # the function's rows, every rank's
    assert sorted(rows.tolist()) == pytest.approx(sorted(score.tolist()))
    (preds,) = exact["metrics"]["auroc"]["preds"]  # the torchmetric's list state, the same
    assert sorted(preds.tolist()) == pytest.approx(sorted(score.tolist()))
    per_step = callbacks["MetricsCallback[name=per_step]"]["train_window"]
    assert per_step["metrics"]["hit"]["weight"] == pytest.approx(25.0)  # every rank's rows
    # state_dict() alone, on the last rank only (a collective in it would hang the run),
    # holds that rank's 11 rows; gathering is on_save_checkpoint's job.
    assert [result["local_window_rows"] for result in ranks] == [None, 11]


@pytest.mark.ddp
def test_ddp_resume_from_an_open_window_logs_what_the_uninterrupted_fit_does(
    run_scenario, tmp_path
):
    # 3 steps per rank and epoch, a window of 4: the checkpoint after epoch 2 holds batches
    # 5-6 of every rank (restored onto rank 0), which the value at batch 8 must include.
    path = str(tmp_path / "epoch2.ckpt")
    straight = run_scenario("metrics_ddp", devices=2, every_n_train_steps=4, epochs=3)
    run_scenario("metrics_ddp", devices=2, every_n_train_steps=4, epochs=2, save=path)
    resumed = run_scenario("metrics_ddp", devices=2, every_n_train_steps=4, epochs=3, resume=path)
    for done, again in zip(straight, resumed, strict=True):
        assert again["logged"].keys() == done["logged"].keys()
        assert {"auroc/train", "gap/train", "hit/train"} <= done["logged"].keys()
        for name, value in done["logged"].items():
            assert again["logged"][name] == pytest.approx(value, abs=1e-6), name
