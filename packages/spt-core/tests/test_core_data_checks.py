"""DataChecks: per-stage, per-dataloader counts of non-finite rows and the largest label."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spt_core import DataChecks

values = st.sampled_from([0.0, 1.5, -2.0, math.nan, math.inf, -math.inf])
rows = st.lists(values, min_size=2, max_size=2)
batches = st.lists(
    st.tuples(
        st.sampled_from(["train", "val"]),
        st.integers(0, 1),
        st.lists(st.tuples(rows, st.integers(-1, 9)), min_size=0, max_size=4),
    ),
    max_size=6,
)


@settings(max_examples=50, deadline=None)
@given(batches)
def test_totals_equal_a_python_count_per_stage_and_loader(batches):
    checks = DataChecks()
    expected = {}
    for stage, loader, batch in batches:
        features = torch.tensor([row for row, _ in batch]).reshape(len(batch), 2)
        labels = torch.tensor([label for _, label in batch], dtype=torch.long)
        finite = checks.update(stage, loader, features, labels)
        assert finite.tolist() == [all(math.isfinite(v) for v in row) for row, _ in batch]
        count, top = expected.get((stage, loader), (0, -1))
        bad = sum(not all(math.isfinite(v) for v in row) for row, _ in batch)
        expected[(stage, loader)] = (count + bad, max([top] + [label for _, label in batch]))
    for stage in ("train", "val"):
        assert checks.read(stage, 2) == [expected.get((stage, i), (0, -1)) for i in (0, 1)]
        assert checks.read(stage, 2) == [(0, -1), (0, -1)]  # read starts the stage over


def test_rows_of_any_shape_are_one_row_each_and_no_loader_reads_nothing():
    checks = DataChecks()
    images = torch.zeros(3, 2, 2)
    images[1, 1, 0] = math.nan
    assert checks.update("test", 0, images, torch.tensor([0, 1, 2])).tolist() == [1, 0, 1]
    assert checks.read("test", 1) == [(1, 2)]
    assert checks.read("test", 0) == []
