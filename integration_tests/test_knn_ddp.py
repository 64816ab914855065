"""OnlineKNN under 2-process DDP on CPU: the bank holds every rank's rows once, the logged
accuracy is what one process computes from that bank and all validation rows, and the
sharded mode gives the results of the gathered mode; sweeps, bank reports and clean banks
in both modes (#15, #16)."""

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
    _check_sweeps_bank_reports_and_clean_banks(ranks)


def _check_sweeps_bank_reports_and_clean_banks(ranks):
    """Sweeps in gather and shard mode equal separate single-(k, T) callbacks (scores and
    logged values); the bank report counts every rank's rows; a clean bank, gathered or
    sharded, equals knn_predict against the clean loader embedded by hand."""
    pairs = [(k, t) for k in (3, 5) for t in (0.5, 2.0)]
    singles = {(5, 0.5): "gather", (3, 0.5): "k3_t0_5", (3, 2.0): "k3_t2_0", (5, 2.0): "k5_t2_0"}
    clean, clean_labels = ranks[0]["clean"]
    hits = 0
    for result in ranks:
        (logged,) = result["logged"]
        for mode in ("gather", "shard"):
            preds = result["preds"][f"sweep_{mode}"]
            for pair in pairs:
                single = singles[pair]
                alone = torch.cat(result["preds"][single])
                assert torch.equal(torch.cat([p[pair] for p in preds]), alone), (mode, pair)
                assert (
                    logged[f"eval/sweep_{mode}_accuracy_k{pair[0]}_t{pair[1]}"]
                    == (logged[f"eval/{single}_accuracy"])
                )
        values = {logged[f"eval/{name}_accuracy"] for name in singles.values()}
        assert len(values) > 1  # the pairs differ: a mix-up would show
        # The bank report: every rank's rows (12 each) and their classes, counted here.
        bank_labels = ranks[0]["bank_labels"].tolist()
        for name in ("gather", "shard", "sweep_shard"):
            assert (logged[f"eval/{name}_bank_rows"], logged[f"eval/{name}_bank_classes"]) == (
                len(bank_labels), len(set(bank_labels))
            )  # fmt: skip
        # Clean banks: each rank's validation rows against the whole clean loader.
        expected = [
            knn_predict(x, clean, clean_labels, 3, k=5, temperature=0.5)
            for x in result["embeddings"].split(8)
        ]
        for mode in ("gather", "shard"):
            got = result["preds"][f"clean_{mode}_clean"]
            assert torch.equal(torch.cat(got), torch.cat(expected)), mode
            assert logged[f"eval/clean_{mode}_clean_bank_rows"] == len(clean_labels) == 30
            assert logged[f"eval/clean_{mode}_clean_bank_classes"] == len(
                set(clean_labels.tolist())
            )
            assert f"eval/clean_{mode}_accuracy" not in logged  # queue_length=0: no queue bank
        hits += (torch.cat(expected).argmax(dim=1) == result["labels"]).sum().item()
    for result in ranks:
        (logged,) = result["logged"]
        for mode in ("gather", "shard"):
            assert logged[f"eval/clean_{mode}_clean_accuracy"] == pytest.approx(hits / 37)
    assert 0.2 < hits / 37 < 1.0
