"""OnlineKNN's clean bank on two gloo processes when one rank has no clean batch: that rank
still takes part in every collective, and both ranks log the offline kNN accuracy of the
validation rows against the whole clean loader, on the schedule of one process."""

import pytest
import torch
from torch import nn

from spt_knn import knn_predict


def offline_accuracy(result) -> float:
    """The clean loader and the validation rows embedded by the final encoder, scored by
    ``knn_predict`` (the last clean evaluation ran after the last training step)."""
    encoder = nn.Linear(4, 8)
    encoder.load_state_dict({k[len("encoder.") :]: v for k, v in result["backbone"].items()
                             if k.startswith("encoder.")})  # fmt: skip
    (clean_x, clean_y), (val_x, val_y) = result["clean"], result["val"]
    with torch.no_grad():
        scores = knn_predict(encoder(val_x), encoder(clean_x), clean_y, 3, k=5, temperature=0.5)
    return (scores.argmax(dim=1) == val_y).float().mean().item()


@pytest.mark.ddp
def test_ddp_clean_bank_when_one_rank_has_no_clean_batch(run_scenario):
    ranks = run_scenario("knn_clean_ddp", devices=2)
    assert [result["embedded"] for result in ranks] == [
        {"gather": 2, "shard": 2},  # one clean batch, at epochs 0 and 2
        {"gather": 0, "shard": 0},
    ]
    expected = offline_accuracy(ranks[0])
    for mode in ("gather", "shard"):
        for result in ranks:
            logged = result["logged"][mode]
            assert [epoch for epoch, _ in logged["accuracy"]] == [0, 2]
            assert logged["bank_rows"] == [(0, 30.0), (2, 30.0)]
            assert logged["bank_classes"] == [(0, 3.0), (2, 3.0)]
            assert logged["accuracy"][-1][1] == pytest.approx(expected, abs=1e-6)
            assert result["states"][mode] == {"clean": {"schedule": {"last_epoch": 2}}}
        assert ranks[0]["logged"][mode] == ranks[1]["logged"][mode]


@pytest.mark.ddp
def test_ddp_clean_bank_breaks_ties_as_one_process(run_scenario):
    # Six clean batches: rank 0 embeds 0, 2, 4 and rank 1 embeds 1, 3, 5. Each row's twin (the
    # next label) sits three batches later, so a bank gathered rank by rank would put some
    # twins first and the tied neighbours would vote otherwise than on one process.
    ranks = run_scenario("knn_clean_ddp", devices=2, clean_batch=5, twins=True)
    assert [result["embedded"]["gather"] for result in ranks] == [6, 6]
    expected = offline_accuracy(ranks[0])
    for result in ranks:
        assert result["logged"]["gather"]["accuracy"][-1][1] == pytest.approx(expected, abs=1e-6)
        assert result["logged"]["shard"]["accuracy"][-1][1] == pytest.approx(expected, abs=1e-6)
