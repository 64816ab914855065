"""One rule per fault (#12), in every package: a value of the wrong type raises ``TypeError``, a
value of the right type outside what is allowed raises ``ValueError``, and both name the
argument (after the callback's ``state_key`` where a callback raises).

The table lists every public callback and every public function or class (each package's
``__all__``) with each argument they check: one value of the wrong type and one of the right
type out of range; the guard tests fail when an argument has no row (a few that no value
makes wrong are listed with the reason). Two documented exceptions: a name outside an allowed
set of strings (``distance_metric="foo"``, ``weighting=3``) is a ``ValueError`` for any value,
and OnlineKNN's ``chunk_size`` follows the seed ("ValueError if chunk_size is invalid",
whatever its type), as does ``knn_predict``'s.
The last tests feed the same data faults through a real Trainer to each callback.
"""

from __future__ import annotations

import inspect
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassAccuracy

import spt_core
import spt_distance
import spt_embed
import spt_knn
import spt_latentviz
import spt_metrics
import spt_probe
import spt_queue
import spt_trainable
from spt_core import (
    SPTCallback,
    StageMetrics,
    callbacks_metrics,
    callbacks_modules,
    lookup,
    set_verbosity,
    unique_names,
)
from spt_core.testing import Backbone, DictDataset, quiet_trainer
from spt_distance import knn_search, pairwise_distances, plan_chunks
from spt_embed import EvaluationSchedule, agree_features, embed_loader, gather_in_loader_order
from spt_knn import (
    OnlineKNN,
    agree_on_rounds,
    knn_bank,
    knn_neighbours,
    knn_predict,
    merge_candidates,
    parse_sweep,
    sharded_neighbours,
    weighted_vote,
)
from spt_latentviz import (
    LatentViz,
    align_map,
    alignment,
    draw_map,
    feature_scaling,
    knn_recall,
    load_map,
    map_scores,
    neighbour_embedding_loss,
    neighbour_graph,
    projection_loss,
    projection_mlp,
    sample_negatives,
    save_animation,
    save_map,
    trustworthiness,
)
from spt_latentviz.alignment import principal_components, scaling_from_sums
from spt_metrics import (
    Alignment,
    DimsForEnergy,
    EffectiveRank,
    EmbeddingStd,
    FunctionMetric,
    LiDAR,
    MeanCosineSimilarity,
    MetricsCallback,
    RankMe,
    Uniformity,
    resolve_needs,
)
from spt_metrics.functional import rankme
from spt_probe import (
    OnlineProbe,
    fit_probe,
    fresh_probe,
    masked_cross_entropy,
    probe_loss,
    probe_predict,
    probe_step,
)
from spt_queue import OnlineQueue, RingBuffer, find_or_create_queue, find_queue, read_aligned
from spt_trainable import (
    LARS,
    TrainableCallback,
    create_optimizer,
    create_scheduler,
    input_width,
    logger_writes_this_step,
)


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
SEARCH = {"queries": ROWS, "bank": ROWS, "labels": LABELS, "k": 2}
SHARD = {"queries": ROWS, "shard": ROWS, "shard_labels": LABELS, "k": 2, "rows": 10}
CANDIDATES = torch.sort(ROWS, dim=1).values
CANDIDATE_LABELS = torch.zeros(10, 3, dtype=torch.long)
MAP, MAP_LABELS = np.zeros((4, 2)), np.array([0, 1, 0, 1])
NOT_WRITTEN = os.path.join(tempfile.gettempdir(), "spt-one-rule-per-fault.npz")  # every call raises
STRINGS, OBJECTS = [["a", "b"]] * 4, [object()] * 4
SUMS = {"total": ROWS.sum(0), "outer": ROWS.T @ ROWS, "count": 10}
STAND_IN = SimpleNamespace(callbacks=[])  # a Trainer's callbacks: all discovery reads
NOT_BOOL = torch.ones(3, dtype=torch.bool)  # a bool per row, but 3 rows of 10

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
    *faults("weighted_vote", calling(weighted_vote, labels=GRAPH % 3, num_classes=3), [
        ("distances", ROWS.tolist(), ROWS[:, 0]),
    ]),
    *faults("weighted_vote", calling(weighted_vote, ROWS[:, :2], num_classes=3), [
        ("labels", GRAPH.float(), GRAPH[:5]),
    ]),
    *faults("knn_bank", calling(knn_bank, features=ROWS, labels=LABELS, sharded=True), [
        ("sharded", 1),
        ("keys", LABELS.float(), LABELS[:3]),
    ]),
    *faults("knn_neighbours", calling(knn_neighbours, **SEARCH), [
        ("queries", ROWS.tolist(), ROWS[0]),
        ("bank", ROWS.tolist(), ROWS[:, :2]),
        ("labels", LABELS.float(), LABELS[:3]),
        ("k", 2.0, -1),
        ("chunk_size", 1.5, 0),
    ]),
    *faults("knn_neighbours", calling(knn_neighbours, **SEARCH), [
        ("distance_metric", 3, "l2"),
    ], type_fault=ALLOWED),
    *faults("merge_candidates", calling(merge_candidates, CANDIDATES, CANDIDATE_LABELS, 2), [
        ("keys", CANDIDATE_LABELS.float(), CANDIDATE_LABELS[:, :2]),
    ]),
    *faults("merge_candidates", calling(
        merge_candidates, distances=CANDIDATES, labels=CANDIDATE_LABELS, k=2
    ), [
        ("distances", CANDIDATES.tolist(), CANDIDATES[0]),
        ("labels", CANDIDATE_LABELS.tolist(), CANDIDATE_LABELS[:, :2]),
        ("k", "2", 4),
    ]),
    *faults("sharded_neighbours", calling(sharded_neighbours, **SHARD), [
        ("queries", ROWS.tolist(), ROWS[0]),
        ("shard", 3, ROWS[:, :2]),
        ("shard_labels", LABELS.float(), LABELS[:3]),
        ("k", "2", -1),
        ("rows", 10.0, 5),
        ("chunk_size", 1.5, 0),
        ("shard_keys", LABELS.float(), LABELS[:3]),
    ]),
    *faults("sharded_neighbours", calling(sharded_neighbours, **SHARD), [
        ("distance_metric", 3, "l2"),
    ], type_fault=ALLOWED),
    *faults("agree_on_rounds", calling(
        agree_on_rounds, queries=ROWS, rows=4, device=torch.device("cpu")
    ), [
        ("queries", ROWS.tolist(), ROWS[0]),
        ("rows", "4", -1),
    ]),
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
    *faults("pairwise_distances", calling(pairwise_distances, x=ROWS, y=ROWS), [
        ("metric", 3, "l2"),
    ], type_fault=ALLOWED),
    *faults("plan_chunks", calling(plan_chunks, n_queries=4, n_keys=10, dim=3, k=2), [
        ("n_queries", 4.5, -1),
        ("n_keys", "10", 0),
        ("dim", 3.0, -1),
        ("k", None, 11),
        ("chunk_size", 2.5, -3),
        ("memory_budget", 1.0, 0),
        ("dtype", "float32", torch.int64),
        ("device", 0.0, "no-such-device"),
    ]),
    *faults("plan_chunks", calling(plan_chunks, n_queries=4, n_keys=10, dim=3, k=2), [
        ("metric", 3, "l2"),
    ], type_fault=ALLOWED),
    # spt-probe
    *faults("masked_cross_entropy", calling(masked_cross_entropy, logits=ROWS, target=LABELS), [
        ("logits", ROWS.tolist(), ROWS[:, 0]),
        ("target", LABELS.tolist(), LABELS[:3]),
    ]),
    *faults("probe_step", calling(probe_step, nn.Linear(3, 2), features=ROWS, target=LABELS), [
        ("features", ROWS.tolist(), ROWS[0, 0]),
        ("target", LABELS.tolist(), LABELS[:3]),
        ("loss_fn", 3),
        ("finite", LABELS, NOT_BOOL),
    ]),
    *faults("probe_step", calling(probe_step, features=ROWS, target=LABELS), [("probe", 3)]),
    *faults("probe_loss", calling(probe_loss, logits=ROWS[:, :2], target=LABELS), [
        ("logits", ROWS.tolist(), ROWS[0, 0]),
        ("target", 3, LABELS[:3]),
        ("loss_fn", 3),
        ("finite", LABELS, NOT_BOOL),
    ]),
    *faults("probe_predict", calling(probe_predict, probe=nn.Linear(3, 2), features=ROWS), [
        ("probe", 3),
        ("features", 3, ROWS[0, 0]),
    ]),
    *faults("fit_probe", calling(fit_probe, nn.Linear(3, 2), features=ROWS, labels=LABELS), [
        ("features", ROWS.tolist(), ROWS[0, 0]),
        ("labels", LABELS.tolist(), LABELS[:3]),
        ("epochs", "10", -1),
        ("batch_size", 4.0, 0),
        ("seed", 0.5, -1),
        ("loss_fn", 3),
        ("optimizer", 5, "no-such-optimizer"),
    ]),
    *faults("fit_probe", calling(fit_probe, features=ROWS, labels=LABELS), [("probe", 3)]),
    *faults("fresh_probe", calling(fresh_probe, nn.Linear(3, 2)), [("seed", "0", -1)]),
    *faults("fresh_probe", calling(fresh_probe), [("probe", 3)]),
    # spt-latentviz
    *faults("neighbour_graph", calling(neighbour_graph, x=ROWS, k=2), [
        ("x", ROWS.tolist(), ROWS[0]),
        ("k", 2.0, 10),
        ("chunk_size", 1.5, 0),
    ]),
    *faults("neighbour_graph", calling(neighbour_graph, x=ROWS, k=2), [("metric", 3, "l2")],
            type_fault=ALLOWED),
    *(
        fault
        for function in (trustworthiness, knn_recall)
        for fault in faults(function.__name__, calling(function, high=ROWS, low=ROWS, k=2), [
            ("high", ROWS.tolist(), ROWS[0]),
            ("low", ROWS.numpy(), ROWS[:5]),
            ("k", "2", 0),
            ("chunk_size", 1.5, 0),
        ])
    ),
    *(
        fault
        for function in (trustworthiness, knn_recall)
        for fault in faults(function.__name__, calling(function, high=ROWS, low=ROWS, k=2), [
            ("metric", 3, "l2"),
        ], type_fault=ALLOWED)
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
    *faults("projection_loss", calling(
        projection_loss, projection=nn.Linear(3, 2), rows=ROWS, neighbours=GRAPH, n_negatives=2
    ), [
        ("projection", 3),
        ("rows", ROWS.tolist(), ROWS[0, 0]),
        ("neighbours", GRAPH.tolist(), GRAPH[:5]),
        ("generator", 3),
    ]),
    *faults("sample_negatives", NEGATIVE_SAMPLES, [
        ("neighbours", GRAPH.tolist(), GRAPH[:, 0]),
        ("generator", 0),
    ]),
    *faults("alignment", calling(alignment, reference=ROWS[:, :2]), [("z", "z", ROWS[:, 0])]),
    *faults("alignment", calling(alignment, z=ROWS[:, :2]), [("reference", 3, ROWS[:0, :2])]),
    *faults("align_map", calling(align_map, reference=ROWS[:, :2]), [("z", 3, ROWS[:5, :2])]),
    *faults("align_map", calling(align_map, z=ROWS[:, :2]), [("reference", 3, ROWS[:, :1])]),
    *faults("feature_scaling", calling(feature_scaling), [("rows", ROWS.tolist(), ROWS[:0])]),
    *faults("feature_scaling", calling(feature_scaling, ROWS), [("floor", "0.1", 0.0)]),
    *faults("scaling_from_sums", calling(scaling_from_sums, **SUMS), [
        ("total", SUMS["total"].long(), SUMS["total"][:2]),
        ("outer", "outer", SUMS["outer"][:2]),
        ("count", "10", torch.ones(2)),
        ("floor", None, 1.5),
    ]),
    *faults("principal_components", calling(principal_components), [
        ("rows", ROWS.tolist(), ROWS[:0]),
    ]),
    *faults("map_scores", calling(map_scores, high=ROWS, low=ROWS, k=2), [
        ("high", ROWS.tolist(), ROWS[0]),
        ("low", 3, ROWS[:5]),
        ("k", "2", 5),
    ]),
    *faults("map_scores", calling(map_scores, ROWS, ROWS, 2), [("metric", 3, "l2")], None, ALLOWED),
    *faults("draw_map", calling(draw_map, coordinates=MAP, labels=MAP_LABELS), [
        ("coordinates", STRINGS, MAP[:, 0]),
        ("labels", OBJECTS, MAP_LABELS[:3]),
        ("title", 3),
        ("size", "7x6", (0.0, 6.0)),
        ("dpi", 100.0, 0),
        ("limits", "xy", (0, 1, 1, 0)),
    ]),
    *faults("save_map", calling(save_map, path=NOT_WRITTEN, coordinates=MAP), [
        ("path", 3, "map\x00.npz"),
        ("coordinates", STRINGS, MAP[:, 0]),
        ("labels", OBJECTS, MAP_LABELS[:3]),
        ("epoch", "three", [3, 4]),  # **scalars: one number each
    ]),
    *faults("load_map", calling(load_map), [("path", 3, "map\x00.npz")]),
    *faults("save_animation", calling(save_animation, frames=[NOT_WRITTEN], path="maps.gif"), [
        ("frames", NOT_WRITTEN, []),
        ("path", 3, "maps\x00.gif"),
        ("name", 3),
        ("seconds_per_frame", "1", 0.0),
    ]),
    # spt-embed
    *faults("embed_loader", EMBED, [
        ("loader", 3),
        ("input", 3, ""),
        ("target", None, ""),
        ("embed", "embedding"),
        ("with_index", 1),
    ]),
    *faults("embed_loader", calling(
        embed_loader, loader=CLEAN, input="embedding", target="label", owner="d"
    ), [("pl_module", 3)]),
    *faults("EvaluationSchedule", calling(EvaluationSchedule), [("every_n_epochs", 1.5, 0)]),
    *faults("agree_features", calling(agree_features), [("features", ROWS.tolist(), ROWS[0])]),
    *faults("gather_in_loader_order", calling(
        gather_in_loader_order, features=ROWS, labels=LABELS, index=torch.arange(10)
    ), [
        ("features", 3, ROWS[0]),
        ("labels", LABELS.float(), LABELS[:3]),
        ("index", 3, torch.arange(3)),
    ]),
    # spt-queue
    *faults("RingBuffer", calling(RingBuffer, capacity=4), [
        ("capacity", 1.5, 0),
        ("shape", "10", -1),
        ("dtype", "float32"),
        ("device", 0.0, "no-such-device"),
    ]),
    *faults("OnlineQueue.read", lambda _: lambda n: queue().read(n), [("n", "2", -1)]),
    *faults("find_queue", calling(find_queue, trainer=STAND_IN, key="z"), [
        ("trainer", 3),
        ("key", 3, ""),
    ]),
    *faults("find_or_create_queue", calling(
        find_or_create_queue, trainer=STAND_IN, key="z", queue_length=4
    ), [
        ("trainer", 3),
        ("key", 3, ""),
        ("queue_length", 4.0, 0),
        ("dim", 1.5, 0),
        ("dtype", "float32"),
        ("previous", 3),
        ("consumer", 3, ""),
        ("class_labels", 1),
    ]),
    *faults("read_aligned", calling(read_aligned, queues=[queue()], n=2, owner="knn"), [
        ("queues", 3),
        ("n", "2", -1),
    ]),
    # spt-metrics
    *faults("rankme", calling(rankme, z=torch.eye(2)), [
        ("z", torch.eye(2).bool(), torch.zeros(4)),
        ("eps", "small", -1.0),
    ]),
    *(
        fault
        for metric in (RankMe, DimsForEnergy, Uniformity, EffectiveRank, EmbeddingStd, LiDAR,
                       MeanCosineSimilarity)
        for fault in faults(metric.__name__, calling(metric), [("num_features", "8", 0)])
    ),
    *faults("RankMe", calling(RankMe, 4), [("eps", "small", -1.0)]),
    *faults("DimsForEnergy", calling(DimsForEnergy, 4), [("energy", "all", 1.5)]),
    *faults("Uniformity", calling(Uniformity, 4), [("max_rows", 8.0, 1), ("t", "2", 0.0)]),
    *faults("LiDAR", calling(LiDAR, 4), [("delta", "small", 0.0), ("eps", "small", -1.0)]),
    *faults("Alignment", calling(Alignment), [("alpha", "2", 0.0)]),
    *faults("FunctionMetric", calling(FunctionMetric, len), [
        ("num_args", "1", -1),
        ("keywords", "preds", ["preds", "preds"]),
        ("per_step", 1),
        ("compute_on_cpu", "no"),
        ("name", 3, ""),
    ]),
    *faults("FunctionMetric", calling(FunctionMetric), [("function", 3)]),
    *faults("resolve_needs", calling(resolve_needs), [("metrics", 3)]),
    *faults("resolve_needs", calling(resolve_needs, {"acc": MulticlassAccuracy(3)}), [
        ("needs", 3, {"no_such_metric": ["preds"]}),
    ]),
    # spt-trainable
    *faults("LARS", calling(LARS, PARAMETERS), [
        ("lr", "0.1", -1.0),
        ("momentum", None, -0.9),
        ("weight_decay", "x", -1e-4),
        ("eta", [1e-3], -1e-3),
        ("eps", True, float("nan")),
        ("dampening", "0", -0.1),
        ("clip_lr", 1),
        ("exclude_bias_n_norm", "no"),
        ("nesterov", 1),
    ]),
    *faults("LARS", calling(LARS), [("params", 3)]),
    *faults("create_optimizer", lambda _: lambda spec: create_optimizer(PARAMETERS, spec), [
        ("optimizer", 5, "no-such-optimizer"),
    ]),
    *faults("create_optimizer", lambda _: lambda params: create_optimizer(params, "SGD"), [
        ("params", 3),
    ]),
    *faults("create_scheduler", calling(
        create_scheduler, optimizer=AN_OPTIMIZER, spec="StepLR", horizon=lambda interval: 30
    ), [
        ("optimizer", 3),
        ("horizon", 3),
    ]),
    *faults("create_scheduler", lambda _: lambda spec: create_scheduler(AN_OPTIMIZER, spec), [
        ("scheduler", 5, "no-such-scheduler"),
    ]),
    *faults("input_width", calling(input_width), [("module", 3)]),
    *faults("logger_writes_this_step", calling(logger_writes_this_step), [("trainer", 3)]),
    # spt-core
    *faults("set_verbosity", calling(set_verbosity), [("verbose", "yes")]),
    *faults("SPTCallback", calling(SPTCallback, name="probe"), [
        ("name", 3, "a/b"),
        ("verbose", "yes"),
    ]),
    *faults("StageMetrics", calling(StageMetrics), [("metrics", [3])]),
    *faults("callbacks_modules", calling(callbacks_modules), [("pl_module", 3)]),
    *faults("callbacks_metrics", calling(callbacks_metrics), [("pl_module", 3)]),
    *faults("unique_names", calling(unique_names), [("names", 3)]),
    *faults("lookup", calling(lookup, outputs={}, batch={}, owner="knn"), [("key", 3)]),
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


PACKAGES = [
    spt_core, spt_distance, spt_embed, spt_knn, spt_latentviz, spt_metrics, spt_probe, spt_queue,
    spt_trainable,
]  # fmt: skip
CALLBACK_NAMES = {"OnlineKNN", "OnlineProbe", "LatentViz", "MetricsCallback", "OnlineQueue"}
CALLBACK_NAMES |= {"TrainableCallback"}
RECORDS = {"ChunkPlan", "KNNBank", "ProbeStep", "RoundShape", "SchedulerConfig", "Sweep", "Needs"}
"""Results that a checked function builds (``plan_chunks``, ``knn_bank``...), not user input."""
LABELS_ONLY = {"owner", "argument", "where"}
"""Who asks, or what to call the value, in a message: any value prints."""
UNCHECKED = {
    "lookup": {"outputs", "batch"},  # a mapping is searched; anything else holds no key
    "metric_name": {"metric"},  # any object, class or function has a name
    "named_metrics": {"metrics"},  # any value; callers check the entries (check_metrics)
    "agree_on_rounds": {"device"},  # any form torch takes, checked by torch
    "build_module": {"spec", "context"},  # spec's rows say `module`; context goes to the factory
    "create_optimizer": {"spec"},  # its rows say `optimizer`, as errors do
    "create_scheduler": {"spec"},  # its rows say `scheduler`, as errors do
}
"""Arguments that no value makes wrong, or whose rows carry the name errors use."""
PUBLIC_FUNCTIONS = {
    name: value
    for package in PACKAGES
    for name in package.__all__
    if callable(value := getattr(package, name)) and not inspect.ismodule(value)
    and name not in CALLBACK_NAMES | RECORDS
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(PUBLIC_FUNCTIONS))
def test_every_checked_argument_of_every_public_function_is_in_the_table(name):
    """Every argument of a public function or class (each package's ``__all__``) has a row,
    unless no value is wrong for it; ``**kwargs`` (torchmetrics' own, or ``save_map``'s
    scalars, whose rows use their keys) aside: a new argument needs its row."""
    parameters = inspect.signature(PUBLIC_FUNCTIONS[name]).parameters.values()
    named = {p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    rows = {f.argument for f in FUNCTION_FAULTS if f.where == name}
    assert named - LABELS_ONLY - UNCHECKED.get(name, set()) <= rows


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
