"""Frames that can be compared: scaling, alignment, the steps at each map and the GIF."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from spt_core.testing import Backbone, DictDataset, captured_logs, quiet_trainer
from spt_latentviz import (
    LatentViz,
    align_map,
    alignment,
    feature_scaling,
    projection_mlp,
    trustworthiness,
)


def turn(angle: float, mirror: bool) -> torch.Tensor:
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = torch.tensor([[cos, sin], [-sin, cos]], dtype=torch.float64)
    return rotation * torch.tensor([-1.0, 1.0], dtype=torch.float64) if mirror else rotation


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(3, 40),
    angle=st.floats(0.0, 2 * math.pi),
    mirror=st.booleans(),
    shift=st.tuples(st.floats(-50, 50), st.floats(-50, 50)),
    seed=st.integers(0, 2**31),
)
def test_a_turned_mirrored_and_shifted_copy_aligns_back_onto_the_map(n, angle, mirror, shift, seed):
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    copy = z @ turn(angle, mirror) + torch.tensor(shift, dtype=torch.float64)
    torch.testing.assert_close(align_map(copy, z), z, atol=1e-8, rtol=0)
    rotation, _ = alignment(copy, z)
    torch.testing.assert_close(rotation @ rotation.T, torch.eye(2, dtype=torch.float64))


def test_alignment_is_the_least_squares_rotation():
    generator = torch.Generator().manual_seed(0)
    z, reference = torch.randn(50, 2, generator=generator), torch.randn(50, 2, generator=generator)
    best = ((align_map(z, reference) - reference) ** 2).sum()
    for angle in torch.linspace(0, 2 * math.pi, 73).tolist():
        for mirror in (False, True):
            other = z @ turn(angle, mirror).float()
            other = other - other.mean(0) + reference.mean(0)
            assert best <= ((other - reference) ** 2).sum() + 1e-4


def test_alignment_refuses_maps_of_other_rows():
    with pytest.raises(ValueError, match="same shape"):
        alignment(torch.zeros(3, 2), torch.zeros(4, 2))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(8, 40), dim=st.integers(1, 5), seed=st.integers(0, 2**31))
def test_feature_scaling_whitens_the_rows(n, dim, seed):
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(dim, dim, generator=generator, dtype=torch.float64) + 2 * torch.eye(dim)
    rows = torch.randn(n, dim, generator=generator, dtype=torch.float64) @ mixing * 7 + 3
    centre, transform = feature_scaling(rows, floor=1e-6)
    white = (rows - centre) @ transform
    covariance = white.T @ white / n
    torch.testing.assert_close(
        white.mean(0), torch.zeros(dim, dtype=torch.float64), atol=1e-8, rtol=0
    )
    torch.testing.assert_close(covariance, torch.eye(dim, dtype=torch.float64), atol=1e-6, rtol=0)


def test_directions_below_the_floor_are_not_blown_up():
    rows = torch.tensor([[0.0, 0.0], [10.0, 0.01], [20.0, 0.01], [30.0, 0.0]])
    centre, transform = feature_scaling(rows, floor=0.1)
    white = (rows - centre) @ transform
    largest = rows[:, 0].std(correction=0).item()
    # the thin direction is scaled by 1 / (0.1 * largest), not by 1 / its own deviation
    assert white.std(0, correction=0).min().item() == pytest.approx(
        0.005 / (0.1 * largest), rel=1e-3
    )


def test_identical_rows_keep_the_identity():
    centre, transform = feature_scaling(torch.full((4, 3), 2.0))
    assert centre.tolist() == [2.0, 2.0, 2.0] and torch.equal(transform, torch.eye(3))


def fitted_viz(tmp_path, epochs=1, **options) -> tuple[LatentViz, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 8, generator=generator) * 6
    features = centres[torch.arange(160) % 4] + torch.randn(160, 8, generator=generator)
    torch.manual_seed(0)
    settings = {"queue_length": 160, "update_interval": 2, "plot_interval": 1, **options}
    viz = LatentViz("viz", "embedding", None, projection_mlp(8, 32), save_dir=tmp_path, **settings)
    trainer = quiet_trainer(max_epochs=epochs, callbacks=[viz], default_root_dir=tmp_path)
    data = DictDataset(x=features, label=torch.arange(160) % 4)
    trainer.fit(Backbone(), DataLoader(data, batch_size=20))
    return viz, features


def test_a_rotated_copy_of_the_map_draws_the_same_aligned_frame(tmp_path):
    viz, features = fitted_viz(tmp_path)
    before = viz.project(features)
    # The projection now draws a turned, mirrored and shifted copy of the same map...
    last = viz.projection[-1]
    rotation = turn(2.0, True).float()
    with torch.no_grad():
        last.weight.copy_(rotation.T @ last.weight)
        last.bias.copy_(last.bias @ rotation + 3.0)
    assert not torch.allclose(viz.project(features), before, atol=1e-2)
    # ...and the next frame (no steps) is aligned back onto the previous one.
    viz.refine_point_steps = viz.refine_max_steps = 0
    assert viz.refine_map(features, seed=1) == 0
    torch.testing.assert_close(viz.project(features), before, atol=1e-4, rtol=0)


def test_the_projection_steps_at_a_map_stop_when_the_loss_stops_improving(tmp_path):
    viz, features = fitted_viz(tmp_path)
    viz.refine_max_steps = 1000
    # The projection already draws this map's points: its loss stalls within a few windows.
    steps = viz.refine_map(features, seed=0) - viz.refine_point_steps
    assert viz.refine_patience * viz.refine_window <= steps < 1000
    assert steps % viz.refine_window == 0


def test_a_map_is_as_faithful_as_its_points_and_better_than_the_online_projection(tmp_path):
    viz, features = fitted_viz(tmp_path, warmup_epochs=1)  # no update, no map yet
    assert viz.optimizer_steps == 0 and viz.last_plot_epoch is None
    before = trustworthiness(features, viz.project(features), 15).item()
    viz.refine_map(features, seed=0)
    after = trustworthiness(features, viz.project(features), 15).item()
    assert after > before + 0.05 and after > 0.9


def test_the_steps_at_a_map_leave_an_unfinished_accumulation_window_alone(tmp_path):
    viz, features = fitted_viz(tmp_path, accumulate_grad_batches=4)
    pending = [torch.full_like(p, 0.5) for p in viz.projection.parameters()]
    for p, grad in zip(viz.projection.parameters(), pending, strict=True):
        p.grad = grad
    assert viz.refine_map(features, seed=2) > 0
    for p, grad in zip(viz.projection.parameters(), pending, strict=True):
        assert p.grad is grad


def test_the_fit_ends_with_an_animation_of_every_frame(tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    with captured_logs(level="DEBUG", format="{message}") as lines:
        fitted_viz(tmp_path, epochs=3)
    gif = tmp_path / "maps.gif"
    with Image.open(gif) as animation:
        assert animation.format == "GIF"
        assert animation.n_frames == 3
        assert animation.size == (700, 600)
    assert sum(str(gif) in line for line in lines) == 1


def test_consecutive_frames_of_fixed_features_stay_in_place(tmp_path):
    from spt_latentviz import load_map

    fitted_viz(tmp_path, epochs=3)

    first, last = (load_map(tmp_path / f"epoch_000{e}.npz")["coordinates"] for e in (1, 2))
    spread = torch.from_numpy(first).std(0).mean()
    moved = (torch.from_numpy(last) - torch.from_numpy(first)).norm(dim=1).median()
    assert moved < 0.25 * spread
