"""Every spt callback under 2-process DDP on CPU against one process on the same global
batches (see ``scenarios/e2e_ddp.py``): the same logged values, predictions and weights."""

import sys
from pathlib import Path

import pytest
import torch

from spt_latentviz import knn_recall, trustworthiness

sys.path.insert(0, str(Path(__file__).parent / "scenarios"))  # e2e_setup, shared with scenarios
import e2e_setup as e2e

# DDP averages the gradients of two 4-row means where one process takes the mean of 8 rows:
# equal in exact arithmetic, different in the last bits. Weights, features and every value
# computed from them (losses, scores, norms) therefore agree to float32 rounding, compounded
# over the 16 steps.
CLOSE = {"rtol": 1e-5, "atol": 1e-6}


def by_index(ranks, key):
    """Every validation row's prediction from both ranks, by row index."""
    rows = {}
    for result in ranks:
        assert rows.keys().isdisjoint(result["predictions"][key])  # each row on one rank
        rows |= result["predictions"][key]
    return rows


def bank_by_index(result):
    order = result["bank_index"].argsort()
    return result["bank_index"][order], result["bank"][order], result["bank_labels"][order]


def offline_map_scores(result):
    """The map's scores recomputed from the queue it was drawn from and its projection."""
    x, z = result["bank"].float(), result["projected_bank"]
    return {
        "eval/viz_trustworthiness": trustworthiness(x, z, 5).item(),
        "eval/viz_knn_recall": knn_recall(x, z, 5).item(),
    }


@pytest.mark.ddp
def test_ddp_logs_what_one_process_logs_on_the_same_batches(run_scenario):
    (single,) = run_scenario("e2e_ddp", devices=1)
    ranks = run_scenario("e2e_ddp", devices=2)
    first, second = ranks

    # Every value is global: both ranks log the same numbers, and the same names as one
    # process (no rank logs a value of its own rows only).
    assert first["logged"] == second["logged"]
    assert first["logged"].keys() == single["logged"].keys()
    assert first["counters"] == second["counters"] == single["counters"] == [16, 2, 2]

    for key, value in single["backbone"].items():
        torch.testing.assert_close(first["backbone"][key], value, **CLOSE)
    for name, weights in single["probes"].items():
        for key, value in weights.items():
            assert torch.equal(first["probes"][name][key], second["probes"][name][key])
            torch.testing.assert_close(first["probes"][name][key], value, **CLOSE)
    assert first["probe_steps"] == single["probe_steps"] == [16, 16]

    # The kNN bank (and LatentViz's map rows: the same queues) holds the rows one process
    # holds, each once: rank 0's 16 then rank 1's 16, where one process interleaves them.
    assert torch.equal(first["bank"], second["bank"])
    index, bank, labels = bank_by_index(first)
    single_index, single_bank, single_labels = bank_by_index(single)
    assert index.tolist() == single_index.tolist() == list(range(32, 64))
    assert torch.equal(labels, single_labels)
    torch.testing.assert_close(bank, single_bank, **CLOSE)

    # Every validation row gets the scores one process gives it, from kNN and both probes;
    # so every argmax, hence every accuracy below, is the same exactly.
    for key in ("knn_preds", "linear_preds", "mlp_preds"):
        distributed, alone = by_index(ranks, key), single["predictions"][key]
        assert sorted(distributed) == sorted(alone) == list(range(32))
        for i, scores in alone.items():
            torch.testing.assert_close(distributed[i], scores, **CLOSE)
            assert distributed[i].argmax() == scores.argmax(), (key, i)

    exact = [
        "eval/knn_accuracy",
        *(
            f"{stage}/{probe}_accuracy"
            for stage in ("train", "eval")
            for probe in ("linear", "mlp")
        ),
        "probe_accuracy/train",
        "probe_accuracy/val",
    ]
    for key in exact:
        assert first["logged"][key] == single["logged"][key], key
    # The probes' epoch losses are means over every rank's rows; the plain-function metric
    # averages per-step values weighted by rows (train) or runs once on all rows (val).
    for key in (
        "train/linear_loss",
        "train/mlp_loss",
        "embedding_norm/train",
        "embedding_norm/val",
    ):
        assert first["logged"][key] == pytest.approx(single["logged"][key], rel=1e-5), key

    # LatentViz differs by design: each rank trains the projection on a neighbour graph of
    # its own 16 rows, with its own negatives (gradients averaged), where one process uses
    # one graph of 32 rows; and at the first update a rank's queue holds 4 rows, too few for
    # k_neighbors=5 (7 optimizer steps instead of 8). So its values are checked against what
    # they are computed from: the map's scores equal a recomputation from the gathered queue
    # and the projection (identical on both ranks), and stay close to the one-process map's.
    assert first["viz_steps"] == second["viz_steps"]
    for key, value in first["projection"].items():
        assert torch.equal(value, second["projection"][key])
    for result in (first, single):
        for key, value in offline_map_scores(result).items():
            assert result["logged"][key] == pytest.approx(value, abs=1e-6), key
    for key in ("eval/viz_trustworthiness", "eval/viz_knn_recall"):
        assert first["logged"][key] == pytest.approx(single["logged"][key], abs=0.05), key
    assert first["logged"]["train/viz_loss"] > 0


@pytest.mark.ddp
def test_bad_rows_on_one_rank_skip_or_stop_every_rank_together(run_scenario):
    # On rank 1 only: a NaN feature in epoch 0's validation, the label 5 in epoch 1's. The
    # checks are global, so both ranks take the same way (a rank that skipped a collective
    # the other entered would hang until the harness's timeout).
    ranks = run_scenario("e2e_ddp", devices=2, faults=True, timeout=120)
    for result in ranks:
        (first_epoch,) = result["logged"]  # the second validation epoch stopped at its end
        assert not {"eval/knn_accuracy", "eval/linear_accuracy", "eval/mlp_accuracy"} & set(
            first_epoch
        )
        assert 0.0 <= first_epoch["eval/viz_trustworthiness"] <= 1.0  # the map: training rows
        assert result["error"].startswith(
            "OnlineKNN[name=knn]: a validation batch of 'label' holds label 5, but num_classes "
            "gives 3 classes"
        )


@pytest.mark.ddp
def test_ddp_resumed_fit_logs_and_holds_what_the_uninterrupted_fit_does(run_scenario, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    straight = run_scenario("e2e_ddp", devices=2, checkpoints=str(checkpoints))
    resumed = run_scenario("e2e_ddp", devices=2, resume=str(checkpoints / "epoch=0.ckpt"))
    for before, after in zip(straight, resumed, strict=True):
        # The last epoch's values, predictions, weights, queues and counters, bit for bit.
        e2e.assert_same(after, before, "rank")


@pytest.mark.ddp
@pytest.mark.parametrize(("every", "file"), [(4, "step=12.ckpt"), (8, "step=8.ckpt")])
def test_ddp_fit_resumed_within_an_epoch_logs_and_holds_what_the_uninterrupted_fit_does(
    run_scenario, tmp_path, every, file
):
    # 8 batches per rank and epoch: step 12 is after 4 of epoch 1's; step 8 is epoch 0's last
    # batch, whose validation and on_train_epoch_end Lightning skips on resume.
    checkpoints, within = tmp_path / "checkpoints", {"every_n_train_steps": every}
    straight = run_scenario("e2e_ddp", devices=2, checkpoints=str(checkpoints), **within)
    resumed = run_scenario("e2e_ddp", devices=2, resume=str(checkpoints / file), **within)
    for before, after in zip(straight, resumed, strict=True):
        # The last epoch's values, predictions, weights, queues and counters, bit for bit.
        e2e.assert_same(after, before, "rank")
