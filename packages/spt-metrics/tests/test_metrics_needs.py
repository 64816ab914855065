"""The pure ``needs`` resolution: inference, the four forms, and its errors."""

from __future__ import annotations

import functools
import inspect
import string

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchmetrics.classification import MulticlassAccuracy

from spt_metrics.needs import (
    Needs,
    arguments,
    bind_needs,
    fetch,
    index_sources,
    infer_needs,
    resolve_needs,
    split_needs,
)


def test_inference_asks_accuracy_score_for_y_true_and_y_pred_only():
    metrics = pytest.importorskip("sklearn.metrics")
    assert resolve_needs({"acc": metrics.accuracy_score}) == {
        "acc": Needs(kwargs={"y_true": "y_true", "y_pred": "y_pred"})
    }


def test_inference_skips_optional_parameters_of_a_plain_function():
    def agreement(a, b, weights=None, *, scale=1.0, **extra):
        return 0.0

    assert infer_needs(agreement, name="agreement") == Needs(kwargs={"a": "a", "b": "b"})


def test_inference_keeps_positional_only_parameters_positional():
    def score(y, p, /, q, *, r, s=1):
        return 0.0

    assert infer_needs(score, name="score") == Needs(args=("y", "p"), kwargs={"q": "q", "r": "r"})


def test_inference_reads_torchmetrics_update_and_partials():
    assert infer_needs(MulticlassAccuracy(num_classes=3), name="acc") == Needs(
        kwargs={"preds": "preds", "target": "target"}
    )

    def score(y_true, y_pred, beta):
        return 0.0

    partial = functools.partial(score, beta=2.0)
    assert infer_needs(partial, name="f2") == Needs(kwargs={"y_true": "y_true", "y_pred": "y_pred"})


@pytest.mark.parametrize(
    "metric", [lambda *arrays: 0.0, lambda **named: 0.0, lambda x=None: 0.0, max]
)
def test_inference_refuses_signatures_that_do_not_say_what_they_take(metric):
    with pytest.raises(ValueError, match=r"cannot infer the needs of metric 'm'"):
        infer_needs(metric, name="m")


def test_an_override_naming_no_metric_lists_the_metric_names():
    with pytest.raises(ValueError, match=r"\['Accuracy'\].*the metrics are \['acc', 'align'\]"):
        split_needs(["acc", "align"], {"Accuracy": ["logits", "labels"]})


def test_a_dict_mixing_overrides_and_sources_is_ambiguous():
    with pytest.raises(ValueError, match="ambiguous"):
        split_needs(["acc"], {"acc": ["p", "t"], "target": "t"})


def test_a_keyword_dict_keyed_by_a_metric_name_is_ambiguous():
    # The seed's second example without the braces of an override.
    with pytest.raises(ValueError, match=r"ambiguous: \['alignment'\] are metric names"):
        split_needs(["alignment"], {"alignment": "Z1"})


def test_bad_sources_are_type_errors():
    with pytest.raises(TypeError, match=r"needs\[1\]"):
        split_needs(["acc"], ["p", 3])
    with pytest.raises(TypeError, match="needs must be None"):
        split_needs(["acc"], "logits")
    with pytest.raises(TypeError, match=r"needs\['acc'\]\['target'\]"):
        split_needs(["acc"], {"acc": {"target": 1.5}})


def test_arguments_that_do_not_fit_the_signature_fail_at_construction():
    def alignment(z1, z2):
        return 0.0

    with pytest.raises(TypeError, match=r"metric 'align' cannot take needs \['Z1', 'Z2', 'Z3'\]"):
        bind_needs(alignment, ["Z1", "Z2", "Z3"], name="align")
    with pytest.raises(TypeError, match="unexpected keyword"):
        bind_needs(alignment, {"z1": "Z1", "z2": "Z2", "z3": "Z3"}, name="align")
    with pytest.raises(TypeError, match="missing a required argument"):
        bind_needs(alignment, {"z1": "Z1"}, name="align")


def test_global_forms_apply_to_every_metric_and_overrides_leave_the_rest_inferred():
    def a(x, y):
        return 0.0

    def b(y_true, y_pred, sample_weight=None):
        return 0.0

    assert resolve_needs({"a": a, "b": b}, ["p", "t"]) == {
        "a": Needs(args=("p", "t")),
        "b": Needs(args=("p", "t")),
    }
    first = lambda out: out["p"]  # noqa: E731
    resolved = resolve_needs({"a": a, "b": b}, {"a": {"x": first, "y": "t"}})
    assert resolved["a"] == Needs(kwargs={"x": first, "y": "t"})
    assert resolved["b"] == Needs(kwargs={"y_true": "y_true", "y_pred": "y_pred"})


def test_fetch_of_a_missing_key_names_the_owner_and_lists_the_output_keys():
    with pytest.raises(KeyError, match=r"metric 'acc'.*'target'.*\['logits', 'loss'\]"):
        fetch("target", {"logits": 1, "loss": 2}, None, owner="MetricsCallback (metric 'acc')")


# ------------------------------------------------------------------ properties

_KINDS = [
    inspect.Parameter.POSITIONAL_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    inspect.Parameter.KEYWORD_ONLY,
]


@st.composite
def signatures(draw):
    """A random valid signature: kinds in order, defaults only after required positionals."""
    names = draw(
        st.lists(st.sampled_from(string.ascii_lowercase), min_size=1, max_size=6, unique=True)
    )
    kinds = sorted(
        draw(st.lists(st.sampled_from(_KINDS), min_size=len(names), max_size=len(names)))
    )
    parameters, defaulted = [], False
    for name, kind in zip(names, kinds, strict=True):
        optional = draw(st.booleans())
        if kind is not inspect.Parameter.KEYWORD_ONLY:
            optional = optional or defaulted
            defaulted = optional
        default = 0 if optional else inspect.Parameter.empty
        parameters.append(inspect.Parameter(name, kind, default=default))
    if draw(st.booleans()):
        parameters.append(inspect.Parameter("rest", inspect.Parameter.VAR_KEYWORD))
    return inspect.Signature(parameters)


def _echo(sig: inspect.Signature):
    """A metric with signature ``sig`` that returns how it was called, all defaults applied."""

    def metric(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        return dict(bound.arguments)

    metric.__signature__ = sig
    return metric


@settings(max_examples=150, deadline=None)
@given(signatures(), st.randoms(use_true_random=False))
def test_inferred_needs_call_each_metric_with_exactly_its_required_parameters(sig, rng):
    required = [
        p.name for p in sig.parameters.values() if p.default is p.empty and p.kind in _KINDS
    ]
    metric = _echo(sig)
    outputs = {name: rng.random() for name in [*sig.parameters, "loss", "other"]}
    if not required:
        with pytest.raises(ValueError, match="ambiguous"):
            resolve_needs({"m": metric})
        return
    needs = resolve_needs({"m": metric})["m"]
    assert sorted(needs.sources()) == sorted(required)
    sources, indexed = index_sources({"m": needs})
    values = [fetch(s, outputs, None, owner="test") for s in sources]
    args, kwargs = arguments(indexed["m"], values)
    called = metric(*args, **kwargs)
    for name, value in called.items():
        if name == "rest":
            assert value == {}
        elif name in required:
            assert value == outputs[name]
        else:  # an optional parameter keeps its default
            assert value == 0


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["acc", "f1", "auc", "align"]),
        st.lists(st.sampled_from(["p", "t", "z", "w"]), min_size=1, max_size=3),
        min_size=1,
    ),
    st.dictionaries(st.sampled_from(["acc", "f1", "auc", "align", "x"]), st.just(["p"])),
)
def test_per_metric_overrides_reach_their_metric_and_positional_order_is_kept(specs, extra):
    names = list(specs)
    overrides = {**extra, **specs}
    unknown = [key for key in overrides if key not in names]
    metrics = {name: (lambda *args: args) for name in names}
    if unknown:
        with pytest.raises(ValueError, match="name no metric") as error:
            resolve_needs(metrics, overrides)
        assert str(names) in str(error.value)
        return
    resolved = resolve_needs(metrics, overrides)
    sources, indexed = index_sources(resolved)
    assert len(sources) == len(set(sources))
    outputs = {"p": 1, "t": 2, "z": 3, "w": 4}
    values = [fetch(s, outputs, None, owner="test") for s in sources]
    for name in names:
        args, kwargs = arguments(indexed[name], values)
        assert metrics[name](*args, **kwargs) == tuple(outputs[key] for key in overrides[name])
        assert kwargs == {}


def test_callable_sources_receive_the_outputs_and_are_shared_by_identity():
    softmax = lambda out: out["logits"].softmax(-1)  # noqa: E731
    needs = {
        "a": Needs(args=(softmax, "target")),
        "b": Needs(kwargs={"preds": softmax, "target": "target"}),
        "c": Needs(args=(lambda out: out["logits"].softmax(-1),)),
    }
    sources, indexed = index_sources(needs)
    assert len(sources) == 3
    outputs = {"logits": torch.zeros(2, 4), "target": torch.tensor([1, 2])}
    values = [fetch(s, outputs, None, owner="test") for s in sources]
    args, _ = arguments(indexed["a"], values)
    assert torch.equal(args[0], torch.full((2, 4), 0.25))
