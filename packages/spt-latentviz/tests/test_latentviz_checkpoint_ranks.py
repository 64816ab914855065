"""What a DDP checkpoint keeps of each rank's loss total, and values logged without a second
reduction. Two ranks are faked here (the collectives replaced by the other rank's part); the
real two-process resume is ``integration_tests/test_latentviz_resume_ranks.py``."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spt_core import distributed
from spt_latentviz import LatentViz, projection_mlp
from spt_trainable import TrainableCallback


def viz() -> LatentViz:
    return LatentViz(
        "viz", "embedding", "label", projection_mlp(16, 32), queue_length=100,
        update_interval=1, plot_interval=1,
    )  # fmt: skip


@pytest.fixture(scope="module")
def fitted(blobs, fit_trainer, tmp_path_factory):
    torch.manual_seed(0)
    features, labels = blobs(120, 16, 3)
    callback = viz()
    trainer = fit_trainer([callback], features, labels, tmp_path_factory.mktemp("fit"))
    return callback, trainer


def pretend_two_ranks(monkeypatch, other_total: torch.Tensor | None) -> list[tuple]:
    """Fake a second rank whose loss total is ``other_total``; record each collective."""
    calls: list[tuple] = []
    other = torch.zeros(2) if other_total is None else other_total

    def gather_uneven(rows):
        calls.append(("gather_uneven", tuple(rows.shape)))
        return torch.cat([rows, rows])

    def all_reduce_mean(tensors):
        for t in tensors:
            calls.append(("all_reduce_mean", tuple(t.shape)))
            t.copy_((t + other) / 2)

    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "gather_uneven", gather_uneven)
    monkeypatch.setattr(distributed, "all_reduce_mean", all_reduce_mean)
    # Only LatentViz's own values: the projection's part is spt-trainable's (and tested there).
    monkeypatch.setattr(TrainableCallback, "gather_checkpoint_state", lambda self, state: state)
    return calls


totals = st.none() | st.tuples(
    st.floats(0, 1e3, allow_nan=False, width=32), st.integers(1, 50)
).map(lambda pair: torch.tensor([pair[0], float(pair[1])]))


@settings(max_examples=40, deadline=None)
@given(own=totals, other=totals)
def test_the_checkpoint_holds_the_ranks_mean_loss_total_with_the_same_collectives(
    fitted, own, other
):
    callback, trainer = fitted
    with pytest.MonkeyPatch.context() as monkeypatch:
        calls = pretend_two_ranks(monkeypatch, other)
        callback._loss_total = None if own is None else own.clone()
        checkpoint = {"callbacks": {callback.state_key: callback.state_dict()}}
        callback.on_save_checkpoint(trainer, trainer.lightning_module, checkpoint)
    written = checkpoint["callbacks"][callback.state_key]["latent_viz"]["loss_total"]
    # A rank without an update issues the same collectives as one with updates.
    generator_bytes = len(torch.Generator().get_state())
    assert calls == [("gather_uneven", (1, generator_bytes)), ("all_reduce_mean", (2,))]
    # The live total is untouched; the checkpoint holds the ranks' mean (None: no update).
    assert (callback._loss_total is None) == (own is None)
    if own is not None:
        assert torch.equal(callback._loss_total, own)
    if own is None and other is None:
        assert written is None
        return
    parts = [t for t in (own, other) if t is not None]
    torch.testing.assert_close(written * 2, sum(parts))


def test_every_rank_restores_the_mean_so_the_ranks_totals_sum_as_before(fitted, monkeypatch):
    callback, trainer = fitted
    own, other = torch.tensor([6.0, 3.0]), torch.tensor([20.0, 3.0])
    pretend_two_ranks(monkeypatch, other)
    callback._loss_total = own.clone()
    checkpoint = {"callbacks": {callback.state_key: callback.state_dict()}}
    callback.on_save_checkpoint(trainer, trainer.lightning_module, checkpoint)
    restored = []
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        resumed = viz()
        resumed.load_state_dict(checkpoint["callbacks"][callback.state_key])
        restored.append(resumed._loss_total)
    assert torch.equal(restored[0], restored[1])
    assert torch.equal(restored[0] + restored[1], own + other)  # not 2 * own (rank 0's)


class RecordingLogs:
    """Wraps ``pl_module.log`` and keeps the keyword arguments of each LatentViz value."""

    def __init__(self, module) -> None:
        self.calls: dict[str, dict] = {}
        self._log = module.log

    def __call__(self, name, value, **kwargs):
        if "viz" in name:
            self.calls[name] = kwargs
        return self._log(name, value, **kwargs)


def test_values_already_the_same_on_every_rank_are_logged_without_sync_dist(
    run_fit, blobs, backbone
):
    features, labels = blobs(120, 16, 3)
    model = backbone(16)
    model.log = logs = RecordingLogs(model)
    run_fit([viz()], features, labels, epochs=1, batch_size=20, model=model, log_every_n_steps=1)
    assert set(logs.calls) == {
        "train/viz_loss_step",
        "train/viz_loss",
        "eval/viz_trustworthiness",
        "eval/viz_knn_recall",
    }
    # The epoch loss and the scores are reduced by the callback (or computed from gathered
    # rows); the step loss is this rank's, as OnlineProbe's: no sync_dist anywhere.
    assert all(not kwargs.get("sync_dist", False) for kwargs in logs.calls.values()), logs.calls
