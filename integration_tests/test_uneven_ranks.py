"""OnlineProbe (online and clean), LatentViz and MetricsCallback under 2-process DDP when one
rank runs no validation batch: the fit finishes on both ranks, every callback logs its
validation values once per epoch, the same on both ranks, and each value equals one process's
computation on the rows the other rank validated (scenario ``uneven_ranks``)."""

import math

import pytest
import torch
from sklearn.manifold import trustworthiness
from sklearn.neighbors import NearestNeighbors
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from spt_metrics.functional import rankme
from spt_probe import fit_probe, fresh_probe

pytestmark = pytest.mark.ddp
EPOCHS, K = 2, 3
CLEAN_EPOCHS, CLEAN_BATCH, CLEAN_LOADER_BATCH = 10, 8, 10
EVAL_NAMES = {
    "eval/lin_accuracy",
    "eval/pc_accuracy",
    "eval/pc_clean_accuracy",
    "eval/map_trustworthiness",
    "eval/map_knn_recall",
    "acc/val",
    "mean/val",
    "rankme/val",
}


def eval_logs(result):
    """``{name: [values, one per log_metrics call]}`` of the validation values of one rank."""
    logged = {}
    for _, metrics in result["records"]:
        for name, value in metrics.items():
            if name.startswith("eval/") or name.endswith("/val"):
                logged.setdefault(name, []).append(value)
    return logged


def linear(in_features, out_features, state):
    module = nn.Linear(in_features, out_features)
    module.load_state_dict(state)
    return module


def encoder(backbone):
    prefix = "encoder."
    return linear(4, 8, {k[len(prefix) :]: v for k, v in backbone.items() if k.startswith(prefix)})


def accuracy(probe, batches):
    """Micro accuracy over the batches, as torchmetrics accumulates it batch by batch."""
    metric = MulticlassAccuracy(3, average="micro")
    for embedding, label in batches:
        metric.update(probe(embedding), label)
    return metric.compute().item()


def clean_probe(embed, clean):
    """The clean evaluation done by hand: the documented fresh probe and training loop."""
    features, labels = clean
    rows = torch.cat([embed(x) for x in features.split(CLEAN_LOADER_BATCH)])
    probe = fresh_probe(nn.Linear(8, 3), seed=0)
    optimizer = {"type": "AdamW", "lr": 0.05}
    return fit_probe(
        probe, rows, labels, epochs=CLEAN_EPOCHS, batch_size=CLEAN_BATCH, optimizer=optimizer
    )


def knn_recall(high, low, k):
    """Share of each row's k nearest features that are among its k nearest map points."""
    near = [NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)[1][:, 1:] for x in (high, low)]
    kept = sum(len(set(a) & set(b)) for a, b in zip(*near, strict=True))
    return kept / (len(high) * k)


def reference(epoch, batches, clean):
    """Each logged validation value, computed in this process on the validated rows alone."""
    embed = encoder(epoch["backbone"]).eval()
    with torch.no_grad():
        rows = [(embed(batch["x"]), batch["label"]) for batch in batches]
        embeddings = torch.cat([embedding for embedding, _ in rows])
        lin_accuracy = accuracy(linear(8, 3, epoch["lin"]), rows)
        expected = {
            "eval/lin_accuracy": lin_accuracy,
            "acc/val": lin_accuracy,  # MetricsCallback reads "lin"'s predictions
            "eval/pc_accuracy": accuracy(linear(8, 3, epoch["pc"]), rows),
            "mean/val": embeddings.mean().item(),
            "rankme/val": rankme(embeddings).item(),
        }
    probe = clean_probe(embed, clean)
    with torch.no_grad():
        expected["eval/pc_clean_accuracy"] = accuracy(probe, rows)
    return expected


@pytest.mark.parametrize(
    "empty", [1, 0], ids=["rank-1-validates-nothing", "rank-0-validates-nothing"]
)
def test_a_rank_without_validation_batches_takes_part_and_logs_one_process_values(
    run_scenario, empty
):
    ranks = run_scenario("uneven_ranks", devices=2, timeout=240, epochs=EPOCHS, empty=empty)
    validated = ranks[1 - empty]
    assert ranks[empty]["val"] == [] and len(validated["val"]) == 3
    logged = eval_logs(ranks[0])
    # Once per epoch, nothing more, and both ranks log the same values.
    assert set(logged) == EVAL_NAMES
    assert all(len(values) == EPOCHS for values in logged.values()), logged
    assert eval_logs(ranks[1]) == logged
    # Every value is already the same on every rank: Lightning's sync_dist hint is not shown.
    hints = [w for w in ranks[0]["warnings"] if "sync_dist=True" in w]
    spt_names = {name for _, metrics in ranks[0]["records"] for name in metrics} - {"epoch"}
    assert not [w for w in hints if any(f"'{name}'" in w for name in spt_names)], hints
    maps = ranks[0]["maps"]
    for e in range(EPOCHS):
        epoch = validated["epochs"][e]
        assert epoch["epoch"] == e
        expected = reference(epoch, validated["val"], validated["clean"])
        for name, value in expected.items():
            assert logged[name][e] == pytest.approx(value, rel=1e-5, abs=1e-6), (name, e)
        assert 0.3 < expected["eval/lin_accuracy"] < 1.0  # the data is not trivial
        assert expected["eval/pc_clean_accuracy"] > 0.5
        # LatentViz: its map of both ranks' queue rows, scored against those rows.
        rows = epoch["map_rows"]
        assert torch.equal(rows, ranks[empty]["epochs"][e]["map_rows"])
        saved = maps[e]
        coordinates = saved["coordinates"]
        assert coordinates.shape == (len(rows), 2) == (64, 2)
        assert all(math.isfinite(v) for v in coordinates.ravel())
        assert int(saved["epoch"]) == e
        scores = {
            "eval/map_trustworthiness": trustworthiness(rows.numpy(), coordinates, n_neighbors=K),
            "eval/map_knn_recall": knn_recall(rows.numpy(), coordinates, K),
        }
        for name, value in scores.items():
            assert logged[name][e] == pytest.approx(value, abs=1e-5), (name, e)
            assert float(saved[name.split("_", 1)[1]]) == pytest.approx(logged[name][e])
    assert ranks[1]["maps"] is None  # only rank 0 writes
