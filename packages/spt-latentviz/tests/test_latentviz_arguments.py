"""What the map functions accept: the faults Python or numpy used to report (or let through)
are now named by the argument, before a file is touched or matplotlib is needed. Every
argument's fault is in ``integration_tests/test_one_rule_per_fault.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spt_latentviz import (
    draw_map,
    feature_scaling,
    load_map,
    plotting,
    projection_loss,
    sample_negatives,
    save_animation,
    save_map,
)
from spt_latentviz.alignment import principal_components, scaling_from_sums

MAP = np.zeros((3, 2))


def test_labels_that_load_map_could_not_read_back_are_refused_before_writing(tmp_path):
    path = tmp_path / "map.npz"
    with pytest.raises(TypeError, match="labels must be None or an array of numbers or strings"):
        save_map(path, MAP, [object(), None, 1])  # an object array needs pickle to load
    assert not path.exists()
    save_map(path, MAP, np.array(["cat", "dog", "cat"]), epoch=3)
    assert load_map(path)["labels"].tolist() == ["cat", "dog", "cat"]


@pytest.mark.parametrize(
    ("scalars", "error", "match"),
    [
        ({"epoch": "three"}, TypeError, "epoch must be a number, got dtype <U5"),
        ({"score": [0.5, 0.7]}, ValueError, r"score must be one number, got shape \(2,\)"),
    ],
)
def test_each_scalar_of_a_map_is_one_number(tmp_path, scalars, error, match):
    with pytest.raises(error, match=match):
        save_map(tmp_path / "map.npz", MAP, **scalars)


def test_the_arguments_of_a_picture_are_checked_without_matplotlib(monkeypatch, tmp_path):
    monkeypatch.setattr(plotting, "has_matplotlib", lambda: False)
    with pytest.raises(ValueError, match=r"dpi must be an integer >= 1, got 0"):
        draw_map(MAP, dpi=0)
    with pytest.raises(TypeError, match="frames must be a list or tuple of paths"):
        save_animation(str(tmp_path / "epoch_0.npz"), tmp_path / "maps.gif")
    with pytest.raises(ValueError, match="frames must hold at least one"):
        save_animation([], tmp_path / "maps.gif")
    with pytest.raises(ImportError, match="matplotlib"):  # the arguments were right
        draw_map(MAP)


def test_numpy_numbers_make_axis_limits():
    """``save_animation`` computes its shared limits with numpy (float32 maps)."""
    pytest.importorskip("matplotlib")
    limits = tuple(np.float32(v) for v in (-1.0, 1.0, -2.0, 2.0))
    axes = draw_map(MAP, limits=limits, size=(np.float64(2.0), 2), dpi=50).axes[0]
    assert axes.get_xlim() == (-1.0, 1.0)


@pytest.mark.parametrize("limits", [(0, 0, 0, 1), (0, 1, 2, 1), (0, float("nan"), 0, 1)])
def test_empty_or_reversed_axis_limits_are_refused(limits):
    with pytest.raises(ValueError, match="limits must be"):
        draw_map(MAP, limits=limits)


@settings(max_examples=40, deadline=None)
@given(floor=st.floats(-1.0, 2.0) | st.just(float("nan")), seed=st.integers(0, 2**16))
def test_the_whitening_floor_is_a_fraction_of_the_largest_deviation(floor, seed):
    rows = torch.randn(20, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if not 0 < floor <= 1:
        with pytest.raises(ValueError, match=r"feature_scaling: floor must be .* in \(0, 1.0\]"):
            feature_scaling(rows, floor)
        return
    centre, transform = feature_scaling(rows, floor)
    white = (rows - centre) @ transform
    deviations = white.std(dim=0, correction=0)
    assert torch.isfinite(transform).all()
    assert (deviations <= 1 + 1e-9).all()  # whitened, or shrunk where below the floor


def test_scaling_from_sums_takes_the_count_as_a_number_or_a_tensor():
    rows = torch.randn(8, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sums = rows.sum(0), rows.T @ rows
    from_number = scaling_from_sums(*sums, 8)
    from_tensor = scaling_from_sums(*sums, torch.tensor(8.0, dtype=torch.float64))
    assert all(torch.equal(a, b) for a, b in zip(from_number, from_tensor, strict=True))
    with pytest.raises(ValueError, match=r"total and outer must have shapes \(D,\) and \(D, D\)"):
        scaling_from_sums(sums[0], sums[1][:2], 8)


@pytest.mark.parametrize("function", [feature_scaling, principal_components])
def test_no_rows_is_a_value_error_naming_rows(function):
    """It was a ``RuntimeError`` from ``reshape``."""
    with pytest.raises(ValueError, match=rf"{function.__name__}: rows must hold at least 1 row"):
        function(torch.zeros(0, 3))


def test_the_loss_names_what_it_cannot_use():
    rows = torch.randn(6, 3)
    graph = torch.zeros(6, 2, dtype=torch.long)
    with pytest.raises(TypeError, match="owner: projection must be callable"):
        projection_loss("mlp", rows, graph, 2, owner="owner")
    with pytest.raises(TypeError, match=r"sample_negatives: generator must be a torch\.Generator"):
        sample_negatives(6, graph, 2, generator=0)
    with pytest.raises(ValueError, match=r"sample_negatives: neighbours must have shape \(N, k\)"):
        sample_negatives(6, graph[:, 0], 2)
