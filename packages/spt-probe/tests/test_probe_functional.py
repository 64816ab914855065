import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from spt_probe import masked_cross_entropy, probe_loss, probe_predict, probe_step
from spt_probe.functional import check_targets


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


# ----------------------------------------------------------------------------- probe_loss


def loss_reference(logits, target, finite, loss_fn):
    """The rule, written with boolean indexing (what the functions avoid): class labels with
    the default loss or an ``ignore_index`` keep the finite rows labelled ``0 <= y < C``."""
    logits, target = torch.tensor(logits, dtype=torch.float64), torch.tensor(target)
    keep = torch.tensor(finite) & (target >= 0) & (target < logits.shape[1])
    if not keep.any():
        return 0.0, 0
    return F.cross_entropy(logits[keep], target[keep]).item(), int(keep.sum())


@settings(max_examples=60, deadline=None)
@given(problems(), st.data(), st.sampled_from(["default", "cross_entropy"]))
def test_probe_loss_leaves_out_unlabelled_and_non_finite_rows(problem, data, form):
    logits, target = problem
    finite = data.draw(st.lists(st.booleans(), min_size=len(target), max_size=len(target)))
    loss_fn = None if form == "default" else nn.CrossEntropyLoss()
    loss, rows = probe_loss(
        torch.tensor(logits, dtype=torch.float64),
        torch.tensor(target),
        loss_fn,
        finite=torch.tensor(finite),
    )
    expected, count = loss_reference(logits, target, finite, loss_fn)
    assert loss.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert rows.item() == count


def test_probe_loss_passes_other_targets_and_losses_through_unchanged():
    logits = torch.randn(4, 2)
    regression = torch.randn(4, 2)
    loss, rows = probe_loss(logits, regression, nn.MSELoss())
    assert torch.equal(loss, F.mse_loss(logits, regression)) and rows.item() == 4
    # A loss without ignore_index gets negative labels as they are: it must handle them.
    seen = []
    probe_loss(logits, torch.tensor([0, -1, 1, -1]), lambda lo, y: seen.append(y) or lo.sum())
    assert seen[0].tolist() == [0, -1, 1, -1]


# ----------------------------------------------------------------------------- probe_step


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(-2, 4), min_size=1, max_size=9),
    st.lists(st.booleans(), min_size=9, max_size=9),
    st.integers(0, 2**16),
)
def test_probe_step_matches_a_masked_reference_in_loss_and_gradient(labels, bad, seed):
    rows = len(labels)
    torch.manual_seed(seed)
    probe = nn.Linear(3, 3).double()
    reference = copy.deepcopy(probe)
    features = torch.randn(rows, 3, dtype=torch.float64)
    poisoned = torch.tensor(bad[:rows])
    features[poisoned] = float("nan")
    target = torch.tensor(labels)

    step = probe_step(probe, features, target)
    step.loss.backward()

    keep = ~poisoned & (target >= 0) & (target < 3)
    assert step.rows.item() == int(keep.sum())
    assert step.logits.shape == (rows, 3) and torch.isfinite(step.logits).all()
    if keep.any():
        expected = F.cross_entropy(reference(features[keep]), target[keep])
        expected.backward()
        torch.testing.assert_close(step.loss, expected)
        torch.testing.assert_close(probe.weight.grad, reference.weight.grad)
    else:
        assert step.loss.item() == 0.0
        assert torch.count_nonzero(probe.weight.grad) == 0


def test_probe_step_detaches_and_casts_the_features():
    encoder = nn.Linear(4, 3)
    features = encoder(torch.randn(5, 4)).bfloat16()
    step = probe_step(nn.Linear(3, 2), features, torch.tensor([0, 1, 1, 0, -1]))
    step.loss.backward()
    assert step.logits.dtype == torch.float32
    assert encoder.weight.grad is None  # nothing reached the backbone


# ----------------------------------------------------------------------------- probe_predict


def test_probe_predict_is_the_eval_forward_and_restores_every_mode():
    probe = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 2))
    probe.train()
    probe[1].eval()  # a frozen BatchNorm inside a training probe stays frozen
    x = torch.randn(6, 3, requires_grad=True)
    preds = probe_predict(probe, x)
    assert [m.training for m in probe.modules()] == [True, True, False, True, True]
    reference = copy.deepcopy(probe).eval()
    assert torch.equal(preds, reference(x).detach())
    assert not preds.requires_grad


def test_predictions_of_non_finite_rows_stay_non_finite():
    x = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
    preds = probe_predict(nn.Linear(2, 3), x)
    assert preds[0].isnan().all() and preds[1].isfinite().all()


# ----------------------------------------------------------------------------- checks


@pytest.mark.parametrize(
    ("target", "default_loss", "error", "says"),
    [
        (["cat", "dog"], True, TypeError, "holds a list, not a tensor; class names must"),
        (torch.zeros(3, dtype=torch.long), True, ValueError, r"has shape \(3,\), but X has 2 rows"),
        (torch.tensor(1), False, ValueError, r"has shape \(\), but X has 2 rows"),
        (torch.zeros(2), True, TypeError, "holds torch.float32 values, but the default loss"),
        (
            torch.zeros(2, 2, dtype=torch.long),
            True,
            ValueError,
            r"has shape \(2, 2\), but the default loss \(cross-entropy\) takes one class index",
        ),
    ],
)
def test_check_targets_names_what_it_checks(target, default_loss, error, says):
    with pytest.raises(error, match=f"^labels {says}"):
        check_targets(target, 2, default_loss=default_loss, name="labels", rows_of="X")


def test_check_targets_lets_any_tensor_of_one_entry_per_row_through_a_custom_loss():
    soft = torch.rand(2, 5)
    assert check_targets(soft, 2, default_loss=False) is soft


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (  # was a RuntimeError from torch.where
            lambda: probe_step(
                nn.Linear(3, 2),
                torch.ones(4, 3),
                torch.zeros(4).long(),
                finite=torch.ones(3, dtype=torch.bool),
            ),
            ValueError,
            r"probe_step: finite must have shape \(4,\), one bool per row",
        ),
        (  # was a RuntimeError from torch.where: a mask of 0/1 integers is not a bool mask
            lambda: probe_loss(
                torch.ones(4, 2), torch.zeros(4).long(), finite=torch.ones(4).long()
            ),
            TypeError,
            "probe_loss: finite must be a bool tensor or None",
        ),
        (  # was a RuntimeError from broadcasting inside the loss
            lambda: probe_step(nn.Linear(3, 2), torch.ones(4, 3), torch.zeros(3).long()),
            ValueError,
            r"probe_step: target must have one entry per row of features, got \(3,\)",
        ),
        (  # was "'int' object is not callable"
            lambda: probe_loss(torch.ones(4, 2), torch.zeros(4).long(), loss_fn=3),
            TypeError,
            r"probe_loss: loss_fn must be callable\(logits, target\) or None, got 3",
        ),
        (  # was an AttributeError: 'function' object has no attribute 'modules'
            lambda: probe_predict(lambda x: x, torch.ones(4, 3)),
            TypeError,
            "probe_predict: probe must be an nn.Module, got function",
        ),
    ],
    ids=["finite rows", "finite dtype", "target rows", "loss_fn", "probe"],
)
def test_arguments_python_used_to_refuse_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()
