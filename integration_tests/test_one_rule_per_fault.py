"""One rule per fault (#12), in every package: a value of the wrong type raises ``TypeError``, a
value of the right type outside what is allowed raises ``ValueError``, and both name the
argument (after the callback's ``state_key`` where a callback raises).

The table lists every public callback and the main public functions with each argument they
check: one value of the wrong type and one of the right type out of range. Two documented
exceptions: a name outside an allowed set of strings (``distance_metric="foo"``,
``weighting=3``) is a ``ValueError`` for any value, and OnlineKNN's ``chunk_size`` follows the
seed ("ValueError if chunk_size is invalid", whatever its type), as does ``knn_predict``'s.
The last tests feed the same data faults through a real Trainer to each callback.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassAccuracy

from spt_core import set_verbosity
from spt_core.testing import Backbone, DictDataset, quiet_trainer
from spt_distance import knn_search, pairwise_distances, plan_chunks
from spt_embed import EvaluationSchedule, embed_loader
from spt_knn import OnlineKNN, knn_bank, knn_predict, parse_sweep, weighted_vote
from spt_latentviz import (
    LatentViz,
    alignment,
    feature_scaling,
    knn_recall,
    neighbour_embedding_loss,
    neighbour_graph,
    projection_loss,
    projection_mlp,
    sample_negatives,
    trustworthiness,
)
from spt_metrics import DimsForEnergy, MetricsCallback, RankMe, Uniformity
from spt_metrics.functional import rankme
from spt_probe import OnlineProbe, fit_probe, fresh_probe, masked_cross_entropy, probe_step
from spt_queue import OnlineQueue, RingBuffer
from spt_trainable import LARS, TrainableCallback, create_optimizer


@dataclass(frozen=True)
class Fault:
    """``call(value)`` checks ``argument``: ``wrong_type`` raises ``type_fault`` (``TypeError``
    by the rule), ``out_of_range`` (``None``: no such value) raises ``ValueError``; the message
    starts with ``owner + ": " + argument`` when an owner is given, else names ``argument``."""

    where: str
    argument: str
    call: Callable[[Any], Any]
    wrong_type: Any
    out_of_range: Any = None
    owner: str | None = None
    type_fault: type[Exception] = TypeError

    def pattern(self) -> str:
        name = re.escape(self.argument) + r"\b"
        return rf"^{re.escape(self.owner)}: {name}" if self.owner else rf"\b{name}"


def calling(function: Callable[..., Any], *args: Any, **given: Any) -> Callable[[str], Any]:
    """``calling(f, ...)(argument)(value)`` calls ``f(..., argument=value)``."""
    return lambda argument: lambda value: function(*args, **{**given, argument: value})


def faults(
    where: str,
    call: Callable[[str], Any],
    rows: list[tuple[Any, ...]],
    owner: str | None = None,
    type_fault: type[Exception] = TypeError,
) -> list[Fault]:
    """A :class:`Fault` per ``(argument, wrong_type[, out_of_range])`` row."""
    return [
        Fault(where, argument, call(argument), *values, owner=owner, type_fault=type_fault)
        for argument, *values in rows
    ]


# ---------------------------------------------------------------------------- the callbacks


def knn(**overrides: Any) -> OnlineKNN:
    settings = {"name": "knn", "input": "embedding", "target": "label", "queue_length": 16}
    return OnlineKNN(**{**settings, "metrics": {}, "num_classes": 3, **overrides})


def probe(**overrides: Any) -> OnlineProbe:
    settings = {"name": "linear", "input": "embedding", "target": "label"}
    return OnlineProbe(**{**settings, "probe": nn.Linear(6, 3), **overrides})


def clean_probe(**overrides: Any) -> OnlineProbe:
    clean = {"clean_loader": [{"x": torch.ones(2, 6)}], "metrics": MulticlassAccuracy(3)}
    return probe(**{**clean, **overrides})


def viz(**overrides: Any) -> LatentViz:
    settings = {"name": "viz", "input": "embedding", "target": "label", "queue_length": 64}
    return LatentViz(**{**settings, "projection": projection_mlp(6), "k_neighbors": 5, **overrides})


def metrics(**overrides: Any) -> MetricsCallback:
    return MetricsCallback(**{"metrics": {"acc": MulticlassAccuracy(3)}, **overrides})


def queue(**overrides: Any) -> OnlineQueue:
    return OnlineQueue(**{"key": "z", "queue_length": 4, **overrides})


def trainable(**overrides: Any) -> TrainableCallback:
    return TrainableCallback(**{"name": "head", "module": nn.Linear(3, 1), **overrides})


KNN, PROBE, VIZ = "OnlineKNN[name=knn]", "OnlineProbe[name=linear]", "LatentViz[name=viz]"
METRICS, QUEUE = "MetricsCallback[name=metrics]", "OnlineQueue[name=z]"
HEAD = "TrainableCallback[name=head]"
ALLOWED = ValueError  # a name outside an allowed set of strings, whatever its type
AN_OPTIMIZER = torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1)
TRAINING = [
    ("optimizer", 5, "no-such-optimizer"),
    ("scheduler", 5, "no-such-scheduler"),
    ("accumulate_grad_batches", 2.0, 0),
    ("verbose", "yes"),
]

CALLBACK_FAULTS = [
    *faults("OnlineKNN", calling(knn), [
        ("input", 3, ""),
        ("target", ["label"], ""),
        ("queue_length", 8.0, -1),
        ("metrics", {"acc": len}, {"": MulticlassAccuracy(3)}),
        ("input_dim", "4", (4, 0)),
        ("target_dim", "1", 2),
        ("num_classes", "3", 0),
        ("k", "5", 0),
        ("temperature", "0.1", 0.0),
        ("verbose", "yes"),
        ("clean_loader", 3),
        ("clean_every_n_epochs", 1.5, 0),
        ("clean_embed", 3),
    ], owner=KNN),
    *faults("OnlineKNN", calling(knn), [("name", 3, "a/b")], owner="OnlineKNN"),
    *faults("OnlineKNN", calling(knn), [
        ("chunk_size", "auto", 0),  # the seed: "ValueError if chunk_size is invalid"
        ("distance_metric", 3, "cos"),
        ("weighting", 3, "gaussian"),
        ("distributed", 3, "ring"),
    ], owner=KNN, type_fault=ALLOWED),
    *faults("OnlineProbe", calling(probe), [
        ("module", 3),
        ("input", 3, ""),
        ("target", 3, ""),
        ("probe", 3),
        ("loss_fn", 3),
        *TRAINING,
        ("gradient_clip_val", "1", 0.0),
        ("metrics", {"acc": len}, {"": MulticlassAccuracy(3)}),
    ], owner=PROBE),
    *faults("OnlineProbe", calling(clean_probe), [
        ("clean_loader", 3),
        ("clean_every_n_epochs", 1.5, 0),
        ("clean_epochs", "10", 0),
        ("clean_batch_size", 8.0, 0),
        ("clean_seed", "0", -1),
        ("clean_optimizer", AN_OPTIMIZER, "no-such-optimizer"),
        ("clean_embed", 3),
    ], owner=PROBE),
    *faults("OnlineProbe", calling(probe), [("name", 3, "a/b")], owner="OnlineProbe"),
    *faults("OnlineProbe", calling(probe), [("gradient_clip_algorithm", 3, "max")], PROBE, ALLOWED),
    *faults("LatentViz", calling(viz), [
        ("input", 3, ""),
        ("target", 3, ""),
        ("projection", 3),
        ("queue_length", 64.0, 0),
        ("k_neighbors", 5.0, 0),
        ("n_negatives", "5", 0),
        *TRAINING,
        ("update_interval", 1.5, 0),
        ("warmup_epochs", "0", -1),
        ("plot_interval", 1.5, 0),
        ("save_dir", 3, "maps\x00"),
        ("input_dim", "6", (6, 0)),
    ], owner=VIZ),
    *faults("LatentViz", calling(viz), [("name", 3, "a/b")], owner="LatentViz"),
    *faults("LatentViz", calling(viz), [("distance_metric", 3, "hamming")], VIZ, ALLOWED),
    *faults("MetricsCallback", calling(metrics), [
        ("metrics", {"x": 3}, []),
        ("needs", 5, {"no_such_metric": ["preds"]}),
        ("compute_per_training_step", "yes"),
        ("compute_per_val_step", 1),
        ("compute_per_test_step", None),
        ("compute_on_cpu", 0),
        ("every_n_train_steps", 1.5, -1),
        ("every_n_train_epochs", "2", -1),
        ("every_n_val_epochs", 1.5, -1),
        ("on_test_end", "no"),
        ("prog_bar", 1),
        ("verbose", "yes"),
    ], owner=METRICS),
    *faults("MetricsCallback", calling(metrics), [("name", 3, "a/b")], owner="MetricsCallback"),
    *faults("OnlineQueue", calling(queue), [
        ("queue_length", 4.0, 0),
        ("dim", 1.5, 0),
        ("dtype", "float32"),
        ("verbose", "yes"),
    ], owner=QUEUE),
    *faults("OnlineQueue", calling(queue), [("key", 3, "")], owner="OnlineQueue"),
    *faults("TrainableCallback", calling(trainable), [
        ("module", 3),
        *TRAINING,
        ("gradient_clip_val", "1", -1.0),
    ], owner=HEAD),
    *faults("TrainableCallback", calling(trainable), [("name", 3, "")], owner="TrainableCallback"),
    *faults("TrainableCallback", calling(trainable), [("gradient_clip_algorithm", 3, "max")],
            HEAD, ALLOWED),
]  # fmt: skip

# ---------------------------------------------------------------------------- the functions

ROWS = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
LABELS = torch.tensor([0, 1] * 5)
GRAPH = neighbour_graph(ROWS, 2)
NEGATIVES = torch.zeros(10, 2, 1, dtype=torch.long)
CLEAN = DataLoader(DictDataset(x=torch.ones(4, 6), label=torch.zeros(4).long()), batch_size=2)
PARAMETERS = [nn.Parameter(torch.ones(1))]
NEGATIVE_SAMPLES = calling(sample_negatives, num_points=10, neighbours=GRAPH, n_negatives=2)
PREDICT = {"queries": ROWS[:2], "bank": ROWS, "bank_labels": LABELS, "num_classes": 2}
EMBEDDING_LOSS = calling(
    neighbour_embedding_loss, z=ROWS[:, :2], neighbours=GRAPH, negatives=NEGATIVES
)
EMBED = calling(
    embed_loader, Backbone(), loader=CLEAN, input="embedding", target="label", owner="d"
)

FUNCTION_FAULTS = [
    # spt-knn
    *faults("knn_predict", calling(knn_predict, **PREDICT), [
        ("queries", ROWS[:2].tolist(), ROWS[:2, None]),
        ("bank", ROWS.tolist(), ROWS[0]),
        ("bank_labels", LABELS.tolist(), LABELS + 5),
        ("num_classes", "2", 0),
        ("k", 2.5, 0),
        ("temperature", "0.1", -1.0),
    ]),
    *faults("knn_predict", calling(knn_predict, **PREDICT), [
        ("chunk_size", 1.5, -2),  # as OnlineKNN's, from the seed
        ("distance_metric", 3, "cos"),
        ("weighting", None, "gaussian"),
    ], type_fault=ALLOWED),
    *faults("knn_bank", calling(knn_bank, features=ROWS, labels=LABELS, num_classes=2), [
        ("features", ROWS.tolist(), ROWS[0]),
        ("labels", [0] * 10, LABELS + 2),
        ("num_classes", 2.0, 0),
    ]),
    *faults("weighted_vote", calling(weighted_vote, ROWS[:, :2], GRAPH, num_classes=3), [
        ("num_classes", "3", 0),
        ("temperature", "1", 0.0),
    ]),
    *faults("weighted_vote", calling(weighted_vote, ROWS[:, :2], GRAPH, 3), [
        ("weighting", 3, "gauss"),
    ], type_fault=ALLOWED),
    *faults("parse_sweep", calling(parse_sweep, k=5, temperature=0.1), [
        ("k", "5", (5, 5)),
        ("temperature", ("a",), ()),
    ]),
    # spt-distance (no spt-core: its own checks, the same rule)
    *faults("knn_search", calling(knn_search, queries=ROWS, keys=ROWS, k=2), [
        ("queries", ROWS.tolist(), ROWS[None]),
        ("keys", ROWS.long(), ROWS[0]),
        ("k", 2.0, 11),
        ("chunk_size", 2.5, 0),
        ("memory_budget", "1G", 0),
        ("exact_distances", 1),
    ]),
    *faults("knn_search", calling(knn_search, ROWS, ROWS, 2), [("metric", 3, "l2")], None, ALLOWED),
    *faults("pairwise_distances", calling(pairwise_distances, x=ROWS, y=ROWS), [
        ("x", ROWS.int(), ROWS[0]),
        ("y", "rows", ROWS[:, :2]),
    ]),
    *faults("plan_chunks", calling(plan_chunks, n_queries=4, n_keys=10, dim=3, k=2), [
        ("n_queries", 4.5, -1),
        ("n_keys", "10", 0),
        ("dim", 3.0, -1),
        ("k", None, 11),
        ("chunk_size", 2.5, -3),
        ("memory_budget", 1.0, 0),
    ]),
    # spt-probe
    *faults("masked_cross_entropy", calling(masked_cross_entropy, logits=ROWS, target=LABELS), [
        ("logits", ROWS.tolist(), ROWS[:, 0]),
        ("target", LABELS.tolist(), LABELS[:3]),
    ]),
    *faults("probe_step", calling(probe_step, nn.Linear(3, 2), features=ROWS, target=LABELS), [
        ("features", ROWS.tolist()),
        ("target", LABELS.tolist()),
    ]),
    *faults("fit_probe", calling(fit_probe, nn.Linear(3, 2), features=ROWS, labels=LABELS), [
        ("features", ROWS.tolist()),
        ("labels", LABELS.tolist()),
        ("epochs", "10", -1),
        ("batch_size", 4.0, 0),
        ("seed", 0.5, -1),
    ]),
    *faults("fresh_probe", calling(fresh_probe, nn.Linear(3, 2)), [("seed", "0", -1)]),
    # spt-latentviz
    *faults("neighbour_graph", calling(neighbour_graph, x=ROWS, k=2), [
        ("x", ROWS.tolist(), ROWS[0]),
        ("k", 2.0, 10),
    ]),
    *(
        fault
        for function in (trustworthiness, knn_recall)
        for fault in faults(function.__name__, calling(function, high=ROWS, low=ROWS, k=2), [
            ("high", ROWS.tolist(), ROWS[0]),
            ("low", ROWS.numpy(), ROWS[:5]),
            ("k", "2", 0),
        ])
    ),
    *faults("sample_negatives", NEGATIVE_SAMPLES, [
        ("num_points", 10.0, 0),
        ("n_negatives", 2.0, 0),
    ]),
    *faults("neighbour_embedding_loss", EMBEDDING_LOSS, [
        ("z", ROWS[:, :2].tolist(), ROWS[:, 0]),
        ("neighbours", GRAPH.tolist(), GRAPH[:5]),
        ("negatives", NEGATIVES.tolist(), NEGATIVES[:, :1]),
    ]),
    *faults("projection_loss", calling(projection_loss, nn.Linear(3, 2), ROWS, GRAPH), [
        ("n_negatives", "2", 0),
    ]),
    *faults("projection_mlp", calling(projection_mlp, in_dim=8), [
        ("in_dim", "8", 0),
        ("hidden_dim", 1.5, 0),
        ("depth", 2.0, -1),
    ]),
    *faults("alignment", calling(alignment, reference=ROWS[:, :2]), [("z", "z", ROWS[:, 0])]),
    *faults("feature_scaling", calling(feature_scaling), [("rows", ROWS.tolist(), ROWS[0])]),
    # spt-embed
    *faults("embed_loader", EMBED, [
        ("loader", 3),
        ("input", 3, ""),
        ("target", None, ""),
        ("embed", "embedding"),
        ("with_index", 1),
    ]),
    *faults("EvaluationSchedule", calling(EvaluationSchedule), [("every_n_epochs", 1.5, 0)]),
    # spt-queue
    *faults("RingBuffer", calling(RingBuffer, capacity=4), [
        ("capacity", 1.5, 0),
        ("shape", "10", -1),
    ]),
    *faults("OnlineQueue.read", lambda _: lambda n: queue().read(n), [("n", "2", -1)]),
    # spt-metrics
    *faults("rankme", calling(rankme, z=torch.eye(2)), [
        ("z", torch.eye(2).bool(), torch.zeros(4)),
        ("eps", "small", -1.0),
    ]),
    *faults("RankMe", calling(RankMe), [("num_features", "8", 0)]),
    *faults("DimsForEnergy", calling(DimsForEnergy, 4), [("energy", "all", 1.5)]),
    *faults("Uniformity", calling(Uniformity, 4), [("max_rows", 8.0, 1), ("t", "2", 0.0)]),
    # spt-trainable
    *faults("LARS", calling(LARS, PARAMETERS), [
        ("lr", "0.1", -1.0),
        ("momentum", None, -0.9),
        ("weight_decay", "x", -1e-4),
        ("eta", [1e-3], -1e-3),
        ("eps", True, float("nan")),
        ("dampening", "0", -0.1),
    ]),
    *faults("create_optimizer", lambda _: lambda spec: create_optimizer(PARAMETERS, spec), [
        ("optimizer", 5, "no-such-optimizer"),
    ]),
    # spt-core
    *faults("set_verbosity", calling(set_verbosity), [("verbose", "yes")]),
]  # fmt: skip

FAULTS = CALLBACK_FAULTS + FUNCTION_FAULTS


def ids(fault: Fault) -> str:
    return f"{fault.where}-{fault.argument}"


def raised_by_a_check(error: BaseException) -> None:
    """The error is a check's, not Python's own for a call the table got wrong."""
    assert not re.search(r"multiple values for|unexpected keyword|missing \d", str(error))


@pytest.mark.parametrize("fault", FAULTS, ids=ids)
def test_a_value_of_the_wrong_type_is_a_type_error_naming_the_argument(fault):
    with pytest.raises(fault.type_fault, match=fault.pattern()) as caught:
        fault.call(fault.wrong_type)
    raised_by_a_check(caught.value)


@pytest.mark.parametrize("fault", [f for f in FAULTS if f.out_of_range is not None], ids=ids)
def test_a_value_out_of_range_is_a_value_error_naming_the_argument(fault):
    with pytest.raises(ValueError, match=fault.pattern()) as caught:
        fault.call(fault.out_of_range)
    raised_by_a_check(caught.value)


@pytest.mark.parametrize(
    "callback", [OnlineKNN, OnlineProbe, LatentViz, MetricsCallback, OnlineQueue, TrainableCallback]
)
def test_every_argument_of_every_callback_is_in_the_table(callback):
    """Every constructor argument is checked, and the table holds a row for it: a new
    argument needs its row."""
    rows = {f.argument for f in CALLBACK_FAULTS if f.where == callback.__name__}
    assert set(inspect.signature(callback).parameters) == rows


# ---------------------------------------------------------------------------- data faults


def fit(callback: Any, label: Any) -> None:
    """Fit ``callback`` on 16 rows of 6 features whose ``label`` column is ``label``."""
    rows = torch.randn(16, 6, generator=torch.Generator().manual_seed(0))
    backbone = Backbone(outputs=lambda batch, module: {"embedding": batch["x"], "label": label})
    data = DataLoader(DictDataset(x=rows), batch_size=8)
    quiet_trainer(callbacks=[callback], limit_train_batches=1).fit(backbone, data)


CALLBACKS = {
    "OnlineKNN": (lambda: knn(queue_length=8), KNN),
    "OnlineProbe": (probe, PROBE),
}


@pytest.mark.parametrize("name", sorted(CALLBACKS))
@pytest.mark.parametrize(
    ("label", "error"),
    [
        (torch.rand(8), TypeError),  # floating-point values are not class labels
        (["cat"] * 8, TypeError),  # strings are not class labels
        (torch.zeros(8, 3, dtype=torch.long), ValueError),  # integers, but three per row
        (torch.zeros(8, 3, dtype=torch.long)[:, 0], None),  # one integer per row: fine
    ],
)
def test_the_same_label_fault_raises_the_same_exception_in_every_callback(name, label, error):
    make, owner = CALLBACKS[name]
    if error is None:
        fit(make(), label)
        return
    with pytest.raises(error, match=re.escape(owner)):
        fit(make(), label)


def test_latentviz_refuses_string_labels_with_a_type_error_too():
    with pytest.raises(TypeError, match=re.escape(VIZ) + ": target 'label' holds strings"):
        fit(viz(queue_length=8, k_neighbors=2), ["cat"] * 8)
