"""OnlineKNN in real single-process Trainers: what it logs equals an offline recomputation
from its queue and the validation data; reuse in a second Trainer; checkpoint + resume."""

import pytest
import torch

from spt_knn import knn_predict


def offline_accuracy(observed, loader, *, batch_size=8, **kwargs):
    """Accuracy of knn_predict over one validation loader, batch by batch like validation."""
    embeddings, labels = observed["embeddings"][loader], observed["labels"][loader]
    scores = torch.cat(
        [
            knn_predict(
                x, observed["bank"], observed["bank_labels"], 3, k=5, temperature=0.5, **kwargs
            )
            for x in embeddings.split(batch_size)
        ]
    )
    return (scores.argmax(dim=1) == labels).float().mean().item()


def test_logged_accuracy_matches_offline_per_loader_and_a_reused_callback_logs_again(
    run_scenario,
):
    (result,) = run_scenario("knn_fit", loaders=2, reuse=True, weighting="exp", metric="cosine")
    for run in ("first", "second"):
        observed = result[run]
        assert observed["bank"].shape == (40, 8)
        (last,) = observed["logged"]
        assert sorted(last) == [
            "eval/knn_accuracy/dataloader_idx_0",
            "eval/knn_accuracy/dataloader_idx_1",
            "eval/knn_bank_classes",  # once per epoch, whatever the loaders
            "eval/knn_bank_rows",
        ]
        assert (last["eval/knn_bank_rows"], last["eval/knn_bank_classes"]) == (40, 3)
        for idx in (0, 1):
            expected = offline_accuracy(observed, idx, weighting="exp", distance_metric="cosine")
            assert last[f"eval/knn_accuracy/dataloader_idx_{idx}"] == pytest.approx(expected)
        values = [last[f"eval/knn_accuracy/dataloader_idx_{idx}"] for idx in (0, 1)]
        assert values[0] != values[1]  # the loaders' metrics did not mix
    # The second Trainer kept the bank: it holds rows appended by both fits.
    assert result["second_queue_is_first"]
    assert not torch.equal(result["second"]["bank"], result["first"]["bank"])


def test_metrics_after_a_resume_equal_the_uninterrupted_run(run_scenario, tmp_path):
    ckpt = str(tmp_path / "epoch0.ckpt")
    (straight,) = run_scenario("knn_fit", epochs=2, save=ckpt)
    (resumed,) = run_scenario("knn_fit", epochs=2, resume=ckpt)
    assert len(straight["first"]["logged"]) == 2
    (after_resume,) = resumed["first"]["logged"]  # only the second epoch ran
    assert after_resume == straight["first"]["logged"][1]
    assert after_resume["eval/knn_accuracy"] == pytest.approx(offline_accuracy(resumed["first"], 0))
    assert torch.equal(resumed["first"]["bank"], straight["first"]["bank"])
