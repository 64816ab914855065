"""Saving and drawing maps."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from spt_latentviz import draw_map, load_map, save_map
from spt_latentviz.plotting import figure_to_rgb, save_figure


@settings(max_examples=20, deadline=None)
@given(
    coordinates=hnp.arrays(np.float32, st.tuples(st.integers(0, 50), st.just(2))),
    with_labels=st.booleans(),
    epoch=st.integers(0, 10_000),
)
def test_npz_round_trip(tmp_path_factory, coordinates, with_labels, epoch):
    path = tmp_path_factory.mktemp("npz") / "map.npz"
    labels = np.arange(len(coordinates), dtype=np.int64) % 7 if with_labels else None
    save_map(path, coordinates, labels, epoch=epoch, trustworthiness=0.5)
    saved = load_map(path)
    np.testing.assert_array_equal(saved["coordinates"], coordinates)
    assert saved["coordinates"].dtype == np.float32
    if with_labels:
        np.testing.assert_array_equal(saved["labels"], labels)
        assert saved["labels"].dtype == np.int64
    else:
        assert "labels" not in saved
    assert int(saved["epoch"]) == epoch and float(saved["trustworthiness"]) == 0.5


@pytest.mark.parametrize(
    ("coordinates", "labels", "match"),
    [
        (np.zeros((4, 3)), None, "coordinates"),
        (np.zeros(4), None, "coordinates"),
        (np.zeros((4, 2)), np.zeros(3), "labels"),
    ],
)
def test_save_map_checks_shapes(tmp_path, coordinates, labels, match):
    with pytest.raises(ValueError, match=match):
        save_map(tmp_path / "bad.npz", coordinates, labels)


@pytest.fixture
def points():
    return np.random.default_rng(0).normal(size=(500, 2))


def test_ten_classes_get_a_legend_entry_each(points):
    pytest.importorskip("matplotlib")
    fig = draw_map(points, np.arange(500) % 10, title="ten")
    (ax,) = fig.axes
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [str(i) for i in range(10)]
    colours = {tuple(h.get_color()) for h in legend.legend_handles}
    assert len(colours) == 10
    assert ax.get_title() == "ten"


def test_a_hundred_classes_get_a_colour_bar_instead_of_a_legend(points, tmp_path):
    pytest.importorskip("matplotlib")
    fig = draw_map(points, np.arange(500) % 100)
    ax, bar = fig.axes
    assert ax.get_legend() is None
    assert "100 classes" in bar.get_ylabel()
    assert len(np.unique(ax.collections[0].get_facecolors(), axis=0)) > 50
    save_figure(fig, tmp_path / "many.png")
    assert (tmp_path / "many.png").read_bytes()[:4] == b"\x89PNG"


def test_without_labels_every_point_has_one_colour(points):
    pytest.importorskip("matplotlib")
    fig = draw_map(points, None)
    (ax,) = fig.axes
    assert ax.get_legend() is None
    assert len(np.unique(ax.collections[0].get_facecolors(), axis=0)) == 1


def test_string_labels_and_picture_size(points, tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    backend = matplotlib.get_backend()
    labels = np.array(["cat", "dog"])[np.arange(500) % 2]
    fig = draw_map(points, labels, size=(4.0, 3.0), dpi=50)
    assert figure_to_rgb(fig).shape == (150, 200, 3)
    save_figure(fig, tmp_path / "pets.png")
    assert imread(tmp_path / "pets.png").shape == (150, 200, 4)
    assert matplotlib.get_backend() == backend
