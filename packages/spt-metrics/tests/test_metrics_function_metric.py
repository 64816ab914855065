"""FunctionMetric against plain-Python references, its states through a checkpoint, and the
encoding the ranks use to agree on the rows of a rank without a batch."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchmetrics.classification import MulticlassAccuracy

from spt_core import callbacks_metrics
from spt_metrics import FunctionMetric, MetricsCallback
from spt_metrics._ranks import _decode, _encode


def median_gap(score, target):
    """Not decomposable over batches: only the concatenation gives the exact value."""
    assert isinstance(score, np.ndarray) and isinstance(target, np.ndarray)
    if not (target == 1).any() or not (target == 0).any():
        return 0.0
    return float(np.median(score[target == 1]) - np.median(score[target == 0]))


def split(n, cuts):
    bounds = sorted({0, n, *(c % (n + 1) for c in cuts)})
    return list(itertools.pairwise(bounds))


rows = st.integers(1, 40).flatmap(
    lambda n: st.tuples(
        st.lists(st.floats(-5, 5, allow_nan=False, width=32), min_size=n, max_size=n),
        st.lists(st.integers(0, 1), min_size=n, max_size=n),
        st.lists(st.integers(0, 40), max_size=6),
    )
)


@settings(max_examples=60, deadline=None)
@given(data=rows)
def test_exact_mode_equals_the_function_over_the_concatenation(data):
    scores, targets, cuts = data
    score, target = torch.tensor(scores), torch.tensor(targets)
    metric = FunctionMetric(median_gap, keywords=("score", "target"))
    for start, stop in split(len(scores), cuts):
        metric.update(score=score[start:stop], target=target[start:stop])
    expected = median_gap(score.numpy(), target.numpy())
    assert metric.compute().item() == pytest.approx(expected, rel=1e-6, abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(data=rows)
def test_per_step_mode_is_the_batch_size_weighted_mean(data):
    scores, targets, cuts = data
    score, target = torch.tensor(scores), torch.tensor(targets)
    metric = FunctionMetric(median_gap, num_args=2, per_step=True)
    total = weight = 0.0
    for start, stop in split(len(scores), cuts):
        metric.update(score[start:stop], target[start:stop])
        value = median_gap(score[start:stop].numpy(), target[start:stop].numpy())
        total, weight = total + (stop - start) * value, weight + (stop - start)
    assert metric.compute().item() == pytest.approx(total / weight, rel=1e-6, abs=1e-6)


def test_states_survive_a_state_dict_round_trip_and_keep_accumulating():
    first, second = torch.tensor([0.9, 0.2, 0.4]), torch.tensor([0.7, 0.1])
    labels = torch.tensor([1, 0, 0]), torch.tensor([1, 1])
    straight = FunctionMetric(median_gap, num_args=2)
    straight.update(first, labels[0])
    straight.persistent(True)
    saved = straight.state_dict()
    assert [chunk.tolist() for chunk in saved["arg_0"]] == [pytest.approx(first.tolist())]
    resumed = FunctionMetric(median_gap, num_args=2)
    resumed.load_state_dict(saved)
    for metric in (straight, resumed):
        metric.update(second, labels[1])
    assert resumed.compute() == straight.compute()


def test_copies_share_the_function_but_not_the_states():
    class Locked:  # a callable that cannot be deep-copied
        def __init__(self):
            self.lock = threading.Lock()

        def __call__(self, x):
            return float(x.sum())

    metric = FunctionMetric(Locked(), num_args=1, per_step=True)
    copy = metric.clone()
    assert copy.function is metric.function
    metric.update(torch.ones(3))
    assert copy.weight == 0 and metric.weight == 3


@pytest.mark.parametrize(
    ("metric", "call", "error", "match"),
    [
        (
            FunctionMetric(median_gap, keywords=("score", "target")),
            lambda m: m.update(torch.ones(2), target=torch.ones(2)),
            TypeError,
            r"metric 'median_gap' takes 0 positional argument\(s\) and the keywords "
            r"\['score', 'target'\], got 1 and \['target'\]",
        ),
        (
            FunctionMetric(median_gap, num_args=2),
            lambda m: m.update(torch.tensor(0.5), torch.ones(2)),
            ValueError,
            "FunctionMetric 'median_gap': exact mode concatenates outputs over batches",
        ),
    ],
)
def test_bad_updates_are_named(metric, call, error, match):
    with pytest.raises(error, match=match):
        call(metric)


def test_a_function_must_be_callable():
    with pytest.raises(TypeError, match="FunctionMetric: function must be callable, got 3"):
        FunctionMetric(3)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_args": "2"}, TypeError, "FunctionMetric: num_args must be an integer >= 0"),
        ({"num_args": -1}, ValueError, "FunctionMetric: num_args must be an integer >= 0"),
        # a string was taken as its characters: keywords ("p", "r", "e", "d", "s")
        ({"keywords": "preds"}, TypeError, "FunctionMetric: keywords must be a tuple or list"),
        ({"keywords": ("preds", "preds")}, ValueError, "keywords must not repeat a name"),
        ({"keywords": ("preds", "")}, ValueError, r"keywords\[1\] must be a non-empty string"),
        ({"per_step": "no"}, TypeError, "FunctionMetric: per_step must be a bool"),  # was truthy
        ({"name": ""}, ValueError, "FunctionMetric: name must be a non-empty string key"),
    ],
)
def test_the_declared_arguments_are_checked(kwargs, error, match):
    with pytest.raises(error, match=match):
        FunctionMetric(len, **kwargs)


def test_the_callback_exposes_its_function_copies_per_stage_and_mode(harness):
    data = harness.classification(12, 3, correct=0.5, seed=40)

    def hits(preds, target):
        return float((preds.argmax(-1) == target).mean())

    callback = MetricsCallback(
        {"acc": MulticlassAccuracy(num_classes=3), "hits": hits}, every_n_train_epochs=1
    )
    module = harness.OutputsModule(lambda b, m: {"preds": b["logits"], "target": b["target"]})
    loader = harness.loader(harness.DictDataset(**data), 4)
    harness.make_trainer([callback]).fit(module, loader, loader)
    exposed = callbacks_metrics(module)["metrics"]
    assert isinstance(exposed["train/0"]["hits"], FunctionMetric)
    assert (exposed["train/0"]["hits"].per_step, exposed["val/0"]["hits"].per_step) == (
        True,
        False,
    )
    assert exposed["train/0"]["hits"].function is hits


specs = st.dictionaries(
    st.integers(0, 4),
    st.tuples(
        st.sampled_from([torch.float32, torch.int64, torch.bool, torch.bfloat16]),
        st.lists(st.integers(0, 9), max_size=6).map(tuple),
    ),
)


@settings(max_examples=100, deadline=None)
@given(specs=specs)
def test_source_specs_travel_as_integers_and_back(specs):
    assert _decode(_encode(specs, num_sources=5), num_sources=5) == specs
