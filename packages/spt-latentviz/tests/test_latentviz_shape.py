"""The thin-callback shape of LatentViz: a pure state_dict, one gathering hook, the seed's
positional order, test runs routed like validation, and the public step it calls."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spt_core import distributed
from spt_latentviz import (
    LatentViz,
    load_map,
    neighbour_embedding_loss,
    neighbour_graph,
    projection_loss,
    projection_mlp,
    sample_negatives,
)
from spt_latentviz import _training as training
from spt_trainable import TrainableCallback

SEED_POSITIONAL = [
    "name",
    "input",
    "target",
    "projection",
    "queue_length",
    "k_neighbors",
    "n_negatives",
    "optimizer",
    "scheduler",
    "accumulate_grad_batches",
    "update_interval",
    "warmup_epochs",
    "distance_metric",
    "plot_interval",
    "save_dir",
    "input_dim",
]


def viz(**overrides) -> LatentViz:
    settings_ = {
        "name": "viz",
        "input": "embedding",
        "target": "label",
        "projection": projection_mlp(16, 32),
        "queue_length": 100,
        "update_interval": 1,
        "plot_interval": 1,
    }
    settings_.update(overrides)
    return LatentViz(**settings_)


@pytest.fixture
def fitted(run_fit, blobs):
    torch.manual_seed(0)
    features, labels = blobs(120, 16, 3)
    callback = viz()
    trainer = run_fit([callback], features, labels, epochs=1, batch_size=20)
    return callback, trainer


def pretend_two_ranks(monkeypatch, gather):
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "gather_uneven", gather)
    monkeypatch.setattr(distributed, "all_reduce_mean", lambda tensors: None)  # equal ranks
    # Only LatentViz's own values: the projection's part is spt-trainable's (and tested there).
    monkeypatch.setattr(TrainableCallback, "gather_checkpoint_state", lambda self, state: state)


def test_state_dict_never_communicates(fitted, monkeypatch):
    callback, _ = fitted

    def no_collective(tensor):
        raise AssertionError("state_dict() called a collective")

    pretend_two_ranks(monkeypatch, no_collective)
    state = callback.state_dict()
    own = callback._generator.get_state()
    assert torch.equal(state["latent_viz"]["generators"], own.unsqueeze(0))


def test_the_checkpoint_holds_every_ranks_generator_gathered_in_one_hook(fitted, monkeypatch):
    callback, trainer = fitted
    own = callback._generator.get_state()
    other = own.clone()
    other[0] ^= 1  # another rank's stream
    pretend_two_ranks(monkeypatch, lambda rows: torch.cat([rows, other.unsqueeze(0)]))
    checkpoint = {"callbacks": {callback.state_key: callback.state_dict()}}
    callback.on_save_checkpoint(trainer, trainer.lightning_module, checkpoint)
    written = checkpoint["callbacks"][callback.state_key]["latent_viz"]["generators"]
    assert torch.equal(written, torch.stack([own, other]))
    # A rank of a run on two processes takes its own row back.
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    resumed = viz()
    resumed.load_state_dict(checkpoint["callbacks"][callback.state_key])
    assert torch.equal(resumed._generator.get_state(), other)


def test_the_seed_positional_order_is_kept_and_every_extra_is_keyword_only():
    parameters = list(inspect.signature(LatentViz.__init__).parameters.values())[1:]
    positional = [p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == SEED_POSITIONAL
    assert all(p.kind is p.KEYWORD_ONLY for p in parameters[len(positional) :])
    args = ("m", "e", "l", projection_mlp(4), 64, 5, 5, None, None, 1, 10, 0, "euclidean", 10)
    assert LatentViz(*args, None, None, verbose=True).verbose is True
    with pytest.raises(TypeError, match="positional"):
        LatentViz(*args, None, None, True)


def test_trainer_test_after_a_fit_maps_the_queue_like_validate(run_fit, blobs, backbone, tmp_path):
    from torch.utils.data import DataLoader

    class Tested(backbone):
        def test_step(self, batch, batch_idx):
            return self._step(batch)

    features, labels = blobs(120, 16, 3)
    callback = viz()
    trainer = run_fit([callback], features, labels, epochs=2, batch_size=20, model=Tested(16))
    rows = DataLoader(
        [{"x": f, "label": y} for f, y in zip(features, labels, strict=True)], batch_size=20
    )
    (logged,) = trainer.test(trainer.lightning_module, rows, verbose=False)
    assert set(logged) == {"eval/viz_trustworthiness", "eval/viz_knn_recall"}
    saved = load_map(Path(tmp_path) / "latent_viz_viz" / "epoch_0002.npz")
    assert float(saved["trustworthiness"]) == pytest.approx(logged["eval/viz_trustworthiness"])


def test_each_update_is_the_public_projection_loss(run_fit, blobs, monkeypatch):
    calls: list[torch.Tensor] = []

    def recorded(*args, **kwargs):
        loss = projection_loss(*args, **kwargs)
        calls.append(loss.detach())
        return loss

    monkeypatch.setattr(training, "projection_loss", recorded)
    features, labels = blobs(120, 16, 3)
    callback = viz(plot_interval=5)
    run_fit([callback], features, labels, epochs=1, batch_size=20, validate=False)
    assert len(calls) == callback.optimizer_steps == 5  # batch 0: the queue is too short


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(4, 24),
    k=st.integers(1, 3),
    n_negatives=st.integers(1, 4),
    seed=st.integers(0, 2**31),
)
def test_projection_loss_is_the_loss_of_the_projected_rows(n, k, n_negatives, seed):
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(n, 5, generator=generator)
    projection = torch.nn.Linear(5, 2)
    neighbours = neighbour_graph(rows, k)
    state = generator.get_state()
    loss = projection_loss(projection, rows, neighbours, n_negatives, generator)
    generator.set_state(state)
    negatives = sample_negatives(n, neighbours, n_negatives, generator)
    expected = neighbour_embedding_loss(projection(rows), neighbours, negatives)
    assert torch.equal(loss, expected)


def test_projection_loss_names_its_owner_when_the_map_is_not_2d():
    rows = torch.randn(6, 3)
    with pytest.raises(ValueError, match=r"LatentViz\[name=m\]: the projection must map 6 rows"):
        projection_loss(
            torch.nn.Identity(), rows, neighbour_graph(rows, 1), 1, owner=("LatentViz[name=m]")
        )
