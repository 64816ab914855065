"""OnlineProbe's clean evaluation on two gloo processes: every rank trains the same clean probe,
equal to an offline linear evaluation of the final backbone and to one process; and, in one
process, the clean variants of OnlineKNN and OnlineProbe side by side."""

import pytest
import torch
import torch.nn.functional as F
from loguru import logger
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassAccuracy

from spt_core import callbacks_metrics
from spt_core.testing import Backbone, DictDataset, quiet_trainer
from spt_knn import OnlineKNN
from spt_probe import OnlineProbe

SETTINGS = {"n": 64, "n_clean": 40, "epochs": 2, "clean_epochs": 4, "clean_batch_size": 8}


def offline(result, seed=0):
    """Embed the clean rows with the final encoder, train the documented loop, score val."""
    encoder = nn.Linear(4, 8)
    encoder.load_state_dict({k[len("encoder.") :]: v for k, v in result["backbone"].items()
                             if k.startswith("encoder.")})  # fmt: skip
    (clean_x, clean_y), (val_x, val_y) = result["clean"], result["val"]
    with torch.no_grad():
        clean_x, val_x = encoder(clean_x), encoder(val_x)
    torch.manual_seed(seed)
    probe = nn.Linear(8, 3)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=1e-3)
    order = torch.Generator().manual_seed(seed)
    for _ in range(SETTINGS["clean_epochs"]):
        for rows in torch.randperm(len(clean_x), generator=order).split(8):
            loss = F.cross_entropy(probe(clean_x[rows]), clean_y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        accuracy = (probe(val_x).argmax(1) == val_y).float().mean()
    return probe.state_dict(), accuracy


def assert_offline(result):
    weights, accuracy = offline(result)
    for key, value in weights.items():
        torch.testing.assert_close(result["clean_probe"][key], value, rtol=1e-5, atol=1e-6)
    assert result["clean_accuracy"].item() == pytest.approx(accuracy.item(), abs=1e-6)


@pytest.mark.ddp
@pytest.mark.parametrize(
    "clean_batch", [20, 40, 5], ids=["two-batches", "rank-1-has-none", "four-per-rank"]
)
def test_ddp_clean_probe_is_identical_on_ranks_and_equals_offline(run_scenario, clean_batch):
    ranks = run_scenario("probe_clean", devices=2, batch_size=4, clean_batch=clean_batch,
                         **SETTINGS)  # fmt: skip
    first, second = ranks
    for key, value in first["clean_probe"].items():
        assert torch.equal(value, second["clean_probe"][key]), key
    assert first["trained_epoch"] == second["trained_epoch"] == 1
    assert torch.equal(first["clean_accuracy"], second["clean_accuracy"])
    assert_offline(first)


@pytest.mark.ddp
@pytest.mark.parametrize("clean_batch", [20, 5], ids=["one-batch-per-rank", "four-per-rank"])
def test_ddp_clean_evaluation_equals_one_process_on_a_fixed_backbone(run_scenario, clean_batch):
    # A fixed backbone (lr 0) embeds identical features in both runs; the gathered rows are put
    # back in the loader's order (rank 0 embeds batches 0, 2, 4, 6 of 5 rows, rank 1 the
    # others), so the seeded shuffle sees the same rows and the clean probes coincide.
    settings = {**SETTINGS, "clean_batch": clean_batch, "lr": 0.0}
    first, _ = run_scenario("probe_clean", devices=2, batch_size=4, **settings)
    (single,) = run_scenario("probe_clean", devices=1, batch_size=8, **settings)
    assert_offline(single)
    for key, value in single["clean_probe"].items():
        torch.testing.assert_close(first["clean_probe"][key], value, rtol=1e-6, atol=1e-7)
    assert first["clean_accuracy"].item() == pytest.approx(single["clean_accuracy"].item())


@pytest.mark.ddp
def test_ddp_clean_evaluation_every_two_epochs_trains_at_epochs_0_and_2(run_scenario):
    ranks = run_scenario("probe_clean", devices=2, batch_size=4, clean_batch=5, every=2,
                         **{**SETTINGS, "epochs": 3})  # fmt: skip
    first, second = ranks
    assert first["trained_epoch"] == second["trained_epoch"] == 2
    for key, value in first["clean_probe"].items():
        assert torch.equal(value, second["clean_probe"][key]), key


def test_the_clean_variants_of_knn_and_probe_agree(tmp_path):
    """Side by side: the clean metric copies at the same ``callbacks_metrics`` key, the same
    checkpoint layout, and an empty clean loader reported by one INFO line each."""
    generator = torch.Generator().manual_seed(0)
    data = DictDataset(x=torch.randn(24, 6, generator=generator), label=torch.arange(24) % 3)

    def both(clean_loader):
        return [
            OnlineKNN("knn", "embedding", "label", 16, MulticlassAccuracy(3), num_classes=3,
                      clean_loader=clean_loader),
            OnlineProbe(name="linear", input="embedding", target="label", probe=nn.Linear(5, 3),
                        metrics=MulticlassAccuracy(3), clean_loader=clean_loader, clean_epochs=1),
        ]  # fmt: skip

    callbacks = both(DataLoader(data, batch_size=8))
    torch.manual_seed(0)
    model = Backbone(dim=6, width=5)
    fit = quiet_trainer(callbacks=callbacks)
    fit.fit(model, DataLoader(data, batch_size=8), DataLoader(data, batch_size=8))
    exposed = callbacks_metrics(model)
    assert "val/0/clean" in exposed["knn"] and "val/0/clean" in exposed["linear"]
    fit.save_checkpoint(tmp_path / "both.ckpt")
    saved = torch.load(tmp_path / "both.ckpt", weights_only=False)["callbacks"]
    states = [saved[callback.state_key]["clean"] for callback in callbacks]
    assert states == [{"schedule": {"last_epoch": 0}}] * 2

    said = []
    sink = logger.add(lambda m: said.append((m.record["level"].name, m.record["message"])))
    try:
        torch.manual_seed(0)
        empty = both([])
        quiet_trainer(callbacks=empty).fit(
            Backbone(dim=6, width=5), DataLoader(data, batch_size=8), DataLoader(data, batch_size=8)
        )
    finally:
        logger.remove(sink)
    for callback in empty:
        lines = [(level, text) for level, text in said if text.startswith(callback.state_key)]
        about_clean = [level for level, text in lines if "clean" in text]
        assert about_clean == ["INFO"], lines
