import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spt_probe import masked_cross_entropy


def reference(logits: list[list[float]], target: list[int]) -> float:
    """Float64 mean of -log softmax over the labelled rows, in plain Python."""
    losses = []
    for row, label in zip(logits, target, strict=True):
        if not 0 <= label < len(row):
            continue
        top = max(row)
        log_norm = top + math.log(sum(math.exp(v - top) for v in row))
        losses.append(log_norm - row[label])
    return sum(losses) / len(losses) if losses else 0.0


@st.composite
def problems(draw):
    classes = draw(st.integers(2, 5))
    rows = draw(st.integers(1, 8))
    value = st.floats(-8, 8, allow_nan=False, width=32)
    logits = draw(
        st.lists(st.lists(value, min_size=classes, max_size=classes), min_size=rows, max_size=rows)
    )
    target = draw(st.lists(st.integers(-3, classes + 2), min_size=rows, max_size=rows))
    return logits, target


@settings(max_examples=60, deadline=None)
@given(problems())
def test_matches_a_float64_reference_that_skips_targets_outside_the_classes(problem):
    logits, target = problem
    got = masked_cross_entropy(torch.tensor(logits, dtype=torch.float64), torch.tensor(target))
    assert got.item() == pytest.approx(reference(logits, target), rel=1e-9, abs=1e-12)


def test_no_labelled_row_gives_zero_loss_and_zero_gradient():
    logits = torch.randn(3, 4, requires_grad=True)
    loss = masked_cross_entropy(logits, torch.tensor([-1, -1, -5]))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(logits.grad) == 0


def test_ignored_rows_get_no_gradient():
    logits = torch.randn(4, 3, requires_grad=True)
    masked_cross_entropy(logits, torch.tensor([0, -1, 2, -1])).backward()
    assert torch.count_nonzero(logits.grad[[1, 3]]) == 0
    assert torch.count_nonzero(logits.grad[[0, 2]]) > 0


@pytest.mark.parametrize(
    ("logits", "target"),
    [
        (torch.zeros(3), torch.zeros(3)),
        (torch.zeros(3, 2), torch.zeros(2)),
        (torch.zeros(3, 2), torch.zeros(3, 1)),
    ],
)
def test_shapes_are_checked(logits, target):
    with pytest.raises(ValueError, match="logits"):
        masked_cross_entropy(logits, target.long())
