"""OnlineKNN under 2-process DDP when ranks run different numbers of validation batches,
or none: every rank takes part in the same collectives, both modes give the results of one
process over all validation rows, and shard mode serves the other ranks' queries after its
own batches are done."""

import pytest
import torch

from spt_knn import knn_predict

pytestmark = pytest.mark.ddp
MODES = ("gather", "shard", "shard2")


def _offline(rank_results, loader, bank, bank_labels, k=5, temperature=0.5):
    """Predictions, batch by batch, and the accuracy over every rank's labelled rows."""
    preds, hits, total = [], 0, 0
    for result in rank_results:
        mine = []
        for x, y in zip(result["embeddings"][loader], result["labels"][loader], strict=True):
            scores = knn_predict(x, bank, bank_labels, 3, k=k, temperature=temperature)
            mine.append(scores)
            labelled = y >= 0
            hits += (scores.argmax(dim=1)[labelled] == y[labelled]).sum().item()
            total += labelled.sum().item()
        preds.append(mine)
    return preds, hits / total if total else None


@pytest.mark.parametrize(
    ("labels", "loaders"), [("clean", "iterable"), ("unlabelled", "iterable"), ("clean", "sized")]
)
def test_ranks_with_fewer_or_no_validation_batches_take_part(run_scenario, labels, loaders):
    ranks = run_scenario("knn_uneven", devices=2, timeout=240, labels=labels, loaders=loaders)
    assert len(ranks[0]["labels"]) == (3 if loaders == "iterable" else 2)
    bank, bank_labels = ranks[0]["bank"], ranks[0]["bank_labels"]
    assert bank.shape == (24, 8)
    for result in ranks:
        assert torch.equal(result["bank"], bank)  # gather mode's bank: every rank's rows
        assert not any(result["knn_holds_a_bank"])  # released when the evaluation ended
        assert len(result["logged"]) == 2  # two validation epochs, nothing skipped
    expected = {}
    for loader in (0, 1):
        preds, accuracy = _offline(ranks, loader, bank, bank_labels)
        expected[loader] = accuracy
        for result, offline in zip(ranks, preds, strict=True):
            last = result["preds"][-1]
            got = last[("gather", loader)]
            assert [p.shape for p in got] == [p.shape for p in offline]
            for mine, reference in zip(got, offline, strict=True):
                assert torch.equal(mine, reference), loader
            # Shard mode scores at the end of the epoch: nothing written into the batches.
            for mode in ("shard", "shard2"):
                assert all(p is None for p in last[(mode, loader)])
                assert len(last[(mode, loader)]) == len(offline)
    assert 0.2 < expected[0] < 1.0 and 0.2 < expected[1] < 1.0
    clean, clean_labels = ranks[0]["clean"]
    pairs = [(k, t) for k in (3, 5) for t in (0.5, 1.0)]
    for result in ranks:
        logged = result["logged"][-1]
        accuracies = {name for name in logged if "_bank_" not in name}
        assert accuracies == {
            f"eval/{mode}_accuracy/dataloader_idx_{lo}" for mode in MODES[:2] for lo in (0, 1)
        } | {
            f"eval/shard2_{bank}accuracy_k{k}_t{t}/dataloader_idx_{lo}"
            for bank in ("", "clean_")
            for k, t in pairs
            for lo in (0, 1)
        }  # loader 2 ran no batch on any rank: nothing logged for it
        for mode in MODES[:2]:
            for loader in (0, 1):
                key = f"eval/{mode}_accuracy/dataloader_idx_{loader}"
                assert logged[key] == pytest.approx(expected[loader])
            assert (logged[f"eval/{mode}_bank_rows"], logged[f"eval/{mode}_bank_classes"]) == (
                24, len(set(bank_labels.tolist()))
            )  # fmt: skip
        # The sweep and the clean bank, scored at the end of the epoch in shard mode.
        for (k, t), loader in ((pair, lo) for pair in pairs for lo in (0, 1)):
            queue = _offline(ranks, loader, bank, bank_labels, k, t)[1]
            on_clean = _offline(ranks, loader, clean, clean_labels, k, t)[1]
            suffix = f"_k{k}_t{t}/dataloader_idx_{loader}"
            assert logged[f"eval/shard2_accuracy{suffix}"] == pytest.approx(queue)
            assert logged[f"eval/shard2_clean_accuracy{suffix}"] == pytest.approx(on_clean)
        clean_report = [logged[f"eval/shard2_clean_bank_{what}"] for what in ("rows", "classes")]
        assert clean_report == [30, 3]
