"""OnlineKNN under 2-process DDP on CPU: the bank holds every rank's rows once, the logged
accuracy is what one process computes from that bank and all validation rows, and the
sharded mode gives the results of the gathered mode."""

import pytest
import torch

from spt_knn import knn_predict

pytestmark = pytest.mark.ddp


@pytest.mark.parametrize(("metric", "weighting"), [("euclidean", "inverse")])
def test_gathered_and_sharded_knn_under_ddp(run_scenario, metric, weighting):
    ranks = run_scenario("knn_ddp", devices=2, metric=metric, weighting=weighting)
    first, second = ranks

    # The gathered bank: rank 0's rows then rank 1's, each rank's last 12 rows exactly once.
    own = [r["seen"][-12:].tolist() for r in ranks]
    assert set(own[0]).isdisjoint(own[1])
    for result in ranks:
        assert result["index_snapshot"].tolist() == own[0] + own[1]
        assert torch.equal(result["bank"], torch.cat([first["own_rows"], second["own_rows"]]))
        assert torch.equal(result["bank_labels"], first["bank_labels"])
    bank, bank_labels = first["bank"], first["bank_labels"]
    assert bank.shape == (24, 8)

    # Gather mode, rank by rank, equals knn_predict on the gathered bank, batch by batch.
    predictions = []
    for result in ranks:
        expected = [
            knn_predict(x, bank, bank_labels, 3, k=5, temperature=0.5, distance_metric=metric,
                        weighting=weighting)
            for x in result["embeddings"].split(8)
        ]  # fmt: skip
        assert [p.shape[0] for p in result["preds"]["gather"]] == [len(e) for e in expected]
        assert torch.equal(torch.cat(result["preds"]["gather"]), torch.cat(expected))
        predictions.append(torch.cat(expected).argmax(dim=1))
    # The logged accuracy is the single-process accuracy over all 37 validation rows.
    correct = sum((p == r["labels"]).sum().item() for p, r in zip(predictions, ranks, strict=True))
    for result in ranks:
        (logged,) = result["logged"]
        assert logged["eval/gather_accuracy"] == pytest.approx(correct / 37)
        # Shard mode, with its own queues or reading shared ones: the same scores, bit for
        # bit, and the same logged value.
        gathered = torch.cat(result["preds"]["gather"])
        for name in ("shard", "shared"):
            assert torch.equal(torch.cat(result["preds"][name]), gathered)
            assert logged[f"eval/{name}_accuracy"] == logged["eval/gather_accuracy"]
        # A shard-mode queue of its own keeps this rank's rows only.
        assert torch.equal(result["local_snapshot"], result["own_rows"])
    assert 0.2 < correct / 37 < 1.0  # a value that a wrong bank or pairing would change
