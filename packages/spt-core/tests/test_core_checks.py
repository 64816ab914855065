"""DataChecks: per-stage, per-dataloader counts of non-finite rows and the largest label."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spt_core import DataChecks, checks

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


@pytest.mark.parametrize(
    ("value", "error"), [(0, ValueError), (-3, ValueError), (True, TypeError), (2.0, TypeError)]
)
def test_positive_int_names_the_argument_and_tells_type_from_range(value, error):
    with pytest.raises(error, match=r"^queue_length must be an integer >= 1, got "):
        checks.positive_int(value, "queue_length")
    assert checks.positive_int(5, "queue_length") == 5


@given(st.lists(st.integers(1, 6), min_size=1, max_size=4))
def test_flat_dim_is_the_product_of_the_shape(shape):
    assert checks.flat_dim(tuple(shape)) == math.prod(shape)
    assert checks.flat_dim(list(shape)) == math.prod(shape)


@pytest.mark.parametrize(
    ("dim", "error"),
    [((), ValueError), ((2, 0), ValueError), ("3", TypeError), ((2.0,), TypeError)],
)
def test_flat_dim_refuses_shapes_that_are_no_shapes(dim, error):
    with pytest.raises(error, match="input_dim"):
        checks.flat_dim(dim, "input_dim")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(values, min_size=3, max_size=3), max_size=5))
def test_finite_rows_equals_a_python_check(table):
    features = torch.tensor(table, dtype=torch.float32).reshape(len(table), 3)
    expected = [all(math.isfinite(v) for v in row) for row in table]
    assert checks.finite_rows(features).tolist() == expected
    assert checks.finite_rows(features.reshape(len(table), 3, 1)).tolist() == expected


def test_a_label_outside_the_classes_says_what_num_classes_would_fit():
    checks.check_label_range(4, 5, "the bank")
    checks.check_label_range(99, None, "the bank")
    message = r"the bank holds label 5, but num_classes gives 5 classes .* at least 6"
    with pytest.raises(ValueError, match=message):
        checks.check_label_range(5, 5, "the bank")


def test_metrics_are_anything_with_update_compute_and_reset():
    class Mean:
        def update(self, x): ...
        def compute(self): ...
        def reset(self): ...

    checks.check_metrics({"mean": Mean()}, "Probe[name=p]")
    with pytest.raises(TypeError, match=r"Probe\[name=p\]: metrics\['f'\] must be a metric"):
        checks.check_metrics({"mean": Mean(), "f": sum}, "Probe[name=p]")


@settings(max_examples=50, deadline=None)
@given(batches, st.integers(0, 6))
def test_a_state_restored_mid_epoch_reads_what_the_uninterrupted_checks_read(batches, cut):
    """Checks saved after ``cut`` batches and restored into fresh checks, which then see the
    remaining batches, read what checks that saw every batch read."""

    def feed(checks, part):
        for stage, loader, batch in part:
            features = torch.tensor([row for row, _ in batch]).reshape(len(batch), 2)
            checks.update(stage, loader, features, torch.tensor([y for _, y in batch]).long())

    straight, before = DataChecks(), DataChecks()
    feed(straight, batches)
    feed(before, batches[:cut])
    resumed = DataChecks()
    for stage in ("train", "val"):
        for loader in (0, 1):
            resumed.load(stage, loader, before.state(stage, loader, synchronise=True))
    feed(resumed, batches[cut:])
    for stage in ("train", "val"):
        assert resumed.read(stage, 2) == straight.read(stage, 2)
