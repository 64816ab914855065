"""LatentViz checkpointed mid-epoch under two-process DDP (gloo) and resumed there, on ranks
whose projection losses differ: the resumed fit logs the uninterrupted fit's epoch loss, and
each rank logs its own step loss.

Both checks share the runs (a DDP start costs seconds): a straight 2-epoch fit (8 batches per
epoch and rank) that saves a checkpoint at global step 12, in the middle of epoch 1, and a fit
resumed from it.
"""

import pytest
import torch

pytestmark = pytest.mark.ddp

KEY = "RecordingViz[name=viz]"


def epoch_1_losses(rank):
    return [loss for epoch, loss in rank["losses"] if epoch == 1]


def check_the_epoch_loss_survives_the_mid_epoch_resume(straight, resumed, checkpoint):
    last = [epoch_1_losses(rank) for rank in straight]
    assert [len(losses) for losses in last] == [8, 8]  # one update per batch
    before = [sum(losses[:4]) for losses in last]  # the 4 updates before the checkpoint
    assert before[0] != pytest.approx(before[1], rel=0.01)  # the ranks' losses differ
    # The resumed fit trains on the same last 4 batches and continues each rank's updates.
    for done, again, losses in zip(straight, resumed, last, strict=True):
        assert again["seen"] == done["seen"][-4:]
        assert epoch_1_losses(again) == pytest.approx(losses[4:], rel=1e-6)
    # The resumed epoch mean is the uninterrupted one: every update of both ranks...
    epoch_mean = sum(map(sum, last)) / 16
    for done, again in zip(straight, resumed, strict=True):
        assert done["logged"]["train/viz_loss"] == pytest.approx(epoch_mean, rel=1e-6)
        assert again["logged"]["train/viz_loss"] == pytest.approx(epoch_mean, rel=1e-6)
    # ...as the checkpoint holds the ranks' mean of (sum of update losses, updates) so far.
    total = checkpoint["callbacks"][KEY]["latent_viz"]["loss_total"]
    assert total.tolist() == pytest.approx([sum(before) / 2, 4.0], rel=1e-6)


def check_each_rank_logs_its_own_step_loss(runs):
    for run in runs:
        for rank in run:
            assert rank["logged"]["train/viz_loss_step"] == rank["losses"][-1][1]
        assert run[0]["logged"]["train/viz_loss_step"] != run[1]["logged"]["train/viz_loss_step"]
        # Scores are computed from every rank's rows and one map: the same on every rank.
        for name in ("eval/viz_trustworthiness", "eval/viz_knn_recall"):
            assert run[0]["logged"][name] == run[1]["logged"][name]


def test_mid_epoch_resume_logs_the_uninterrupted_epoch_loss_of_ranks_that_differ(
    run_scenario, tmp_path
):
    checkpoints = tmp_path / "checkpoints"
    straight = run_scenario("latentviz_resume_ranks", devices=2, checkpoint_dir=str(checkpoints))
    path = checkpoints / "step=12.ckpt"
    resumed = run_scenario("latentviz_resume_ranks", devices=2, resume=str(path))
    checkpoint = torch.load(path, weights_only=False)
    check_the_epoch_loss_survives_the_mid_epoch_resume(straight, resumed, checkpoint)
    check_each_rank_logs_its_own_step_loss([straight, resumed])
