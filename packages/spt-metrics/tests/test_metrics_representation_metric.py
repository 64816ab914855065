"""The representation Metrics: equal to their functions over uneven batches, through a
checkpoint, inside a ``MetricsCallback`` on a real Trainer, and with a bounded Uniformity."""

from __future__ import annotations

import io
import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from spt_metrics import (
    Alignment,
    DimsForEnergy,
    EffectiveRank,
    EmbeddingStd,
    LiDAR,
    MeanCosineSimilarity,
    MetricsCallback,
    RankMe,
    Uniformity,
)
from spt_metrics._representation_stats import normalise, uniformity_from_rows
from spt_metrics.functional import (
    alignment,
    dims_for_energy,
    effective_rank,
    embedding_std,
    lidar,
    mean_cosine_similarity,
    rankme,
    uniformity,
)

CHECKS = settings(max_examples=25, deadline=None)
D = 5


def cases(rows: int):
    """(name, Metric, function of the two views, update arguments of one batch, tolerance)."""
    exact = {"rel": 1e-9, "abs": 1e-12}
    float32_buffer = {"rel": 1e-5, "abs": 1e-6}
    return [
        ("rankme", RankMe(D), lambda a, b: rankme(a), lambda a, b: (a,), exact),
        ("erank", EffectiveRank(D), lambda a, b: effective_rank(a), lambda a, b: (a,), exact),
        (
            "dims",
            DimsForEnergy(D, energy=0.9),
            lambda a, b: dims_for_energy(a, energy=0.9),
            lambda a, b: (a,),
            exact,
        ),
        ("std", EmbeddingStd(D), lambda a, b: embedding_std(a), lambda a, b: (a,), exact),
        (
            "cos",
            MeanCosineSimilarity(D),
            lambda a, b: mean_cosine_similarity(a),
            lambda a, b: (a,),
            exact,
        ),
        (
            "align",
            Alignment(alpha=1.5),
            lambda a, b: alignment(a, b, 1.5),
            lambda a, b: (a, b),
            exact,
        ),
        (
            "unif",
            Uniformity(D, max_rows=rows, t=1.0),
            lambda a, b: uniformity(a, b, t=1.0),
            lambda a, b: (a, b),
            float32_buffer,
        ),
        ("lidar", LiDAR(D), lambda a, b: lidar(a, b), lambda a, b: (a, b), {"rel": 1e-7}),
    ]


def two_views(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, D, generator=generator) * torch.rand(D, generator=generator) * 3
    return z1, z1 + 0.3 * torch.randn(n, D, generator=generator)


def splits(n: int, cuts: list[int]) -> list[tuple[int, int]]:
    bounds = [0, *sorted(min(c, n) for c in cuts), n]
    return list(itertools.pairwise(bounds))


def assert_equal(value, expected, tolerance, name):
    assert value.dtype == torch.float64, name
    assert float(value) == pytest.approx(float(expected), **tolerance), name


@CHECKS
@given(st.integers(2, 30), st.lists(st.integers(0, 30), max_size=5), st.integers(0, 10**6))
def test_each_metric_over_uneven_batches_equals_its_function_over_all_rows(n, cuts, seed):
    z1, z2 = two_views(n, seed)
    for name, metric, function, arguments, tolerance in cases(rows=n):
        for start, stop in splits(n, cuts):  # empty batches included
            metric.update(*arguments(z1[start:stop], z2[start:stop]))
        assert_equal(metric.compute(), function(z1, z2), tolerance, name)


@CHECKS
@given(st.integers(2, 30), st.integers(0, 30), st.integers(0, 10**6))
def test_each_metric_resumes_from_its_state_dict_mid_stream(n, cut, seed):
    z1, z2 = two_views(n, seed)
    cut = min(cut, n)
    for (name, metric, function, arguments, tolerance), (_, fresh, *_) in zip(
        cases(rows=n), cases(rows=n), strict=True
    ):
        metric.update(*arguments(z1[:cut], z2[:cut]))
        buffer = io.BytesIO()
        torch.save(metric.state_dict(), buffer)
        assert set(metric.state_dict()) == set(metric._defaults), name  # every state persists
        buffer.seek(0)
        fresh.load_state_dict(torch.load(buffer))
        fresh.update(*arguments(z1[cut:], z2[cut:]))
        assert_equal(fresh.compute(), function(z1, z2), tolerance, name)


def test_forward_returns_the_batch_value_and_keeps_accumulating():
    z1, z2 = two_views(24, seed=3)
    for name, metric, function, arguments, tolerance in cases(rows=24):
        batch = metric(*arguments(z1[:10], z2[:10]))
        assert_equal(batch, function(z1[:10], z2[:10]), tolerance, name)
        metric(*arguments(z1[10:], z2[10:]))
        assert_equal(metric.compute(), function(z1, z2), tolerance, name)
        metric.reset()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchmetrics: compute before update
            assert math.isnan(metric.compute()), name


@pytest.mark.parametrize("sizes", [[3, 5, 2], [9, 1], [10]])
def test_uniformity_keeps_the_most_recent_max_rows_rows(sizes):
    z1, z2 = two_views(sum(sizes), seed=4)
    one, both = Uniformity(D, max_rows=4), Uniformity(D, max_rows=4)
    start = 0
    for size in sizes:
        one.update(z1[start : start + size])
        both.update(z1[start : start + size], z2[start : start + size])
        start += size
    assert float(one.compute()) == pytest.approx(float(uniformity(z1[-4:])), rel=1e-5)
    expected = uniformity(z1[-4:], z2[-4:])
    assert float(both.compute()) == pytest.approx(float(expected), rel=1e-5)


def test_half_precision_inputs_are_accumulated_in_float64():
    z1, z2 = two_views(16, seed=5)
    for name, metric, function, arguments, _ in cases(rows=16):
        metric.update(*arguments(z1.bfloat16(), z2.bfloat16()))
        expected = function(z1.bfloat16().double(), z2.bfloat16().double())
        assert_equal(metric.compute(), expected, {"rel": 1e-5, "abs": 1e-6}, name)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: RankMe(0), ValueError, "RankMe: num_features must be an integer >= 1, got 0"),
        (lambda: EffectiveRank(True), TypeError, "EffectiveRank: num_features must be an integer"),
        (lambda: EmbeddingStd(2.0), TypeError, "EmbeddingStd: num_features must be an integer"),
        (lambda: DimsForEnergy(3, energy=2), ValueError, r"DimsForEnergy: energy must be in \(0"),
        (lambda: DimsForEnergy(3, energy="a"), TypeError, "DimsForEnergy: energy must be a fin"),
        (lambda: RankMe(3).update(torch.zeros(4, 2)), ValueError, "RankMe: z has 2 features, ex"),
        (lambda: MeanCosineSimilarity(3).update(torch.zeros(3)), ValueError, "MeanCosineSimil"),
        (lambda: Alignment().update(torch.eye(2), torch.eye(3)), ValueError, "Alignment: z1 and"),
        (lambda: Uniformity(3, max_rows=1), ValueError, "Uniformity: max_rows must be an int"),
        (lambda: Uniformity(3).update(torch.eye(3), torch.eye(2)), ValueError, "Uniformity: z2"),
        (lambda: LiDAR(3).update(torch.zeros(4, 1, 3)), ValueError, "LiDAR: needs at least 2 "),
        (lambda: LiDAR(3).update(torch.zeros(4, 2, 2)), ValueError, "LiDAR: views have 2 feat"),
        (lambda: LiDAR(3, delta=-1.0), ValueError, "LiDAR: delta must be a finite number > 0"),
    ],
)
def test_bad_arguments_and_inputs_name_the_metric_with_one_error_type_per_fault(
    call, error, message
):
    with pytest.raises(error, match=message):
        call()


def test_the_metrics_inside_a_metrics_callback_on_a_trainer_log_the_functions_values(harness):
    train, val = two_views(30, seed=6), two_views(11, seed=7)
    metrics = {name: metric for name, metric, *_ in cases(rows=32)}
    needs = {
        name: ["z1", "z2"] if name in ("align", "unif", "lidar") else ["z1"] for name in metrics
    }
    callback = MetricsCallback(
        metrics, needs=needs, every_n_train_epochs=1, every_n_val_epochs=1, name="repr"
    )
    trainer = harness.make_trainer([callback])
    module = harness.OutputsModule()
    trainer.fit(
        module,
        harness.loader(harness.DictDataset(z1=train[0], z2=train[1]), batch_size=7),
        harness.loader(harness.DictDataset(z1=val[0], z2=val[1]), batch_size=4),
    )
    logger = trainer.logger
    for name, _, function, _, tolerance in cases(rows=32):
        for stage, (z1, z2) in (("train", train), ("val", val)):
            logged = logger.values(f"{name}/{stage}")
            assert len(logged) == 1, (name, stage, logger.names())
            expected = function(z1, z2)
            assert logged[0] == pytest.approx(float(expected), **tolerance), (name, stage)
    assert np.isfinite([logger.values(f"{n}/train")[0] for n in metrics]).all()


# Operations that make the host wait for an accelerator (a value read back, a data-dependent
# shape). spt-metrics' tests cannot import spt_distance.testing, so a small recorder is here.
HOST_READS = {
    "aten._local_scalar_dense",
    "aten.is_nonzero",
    "aten.nonzero",
    "aten.masked_select",
    "aten.equal",
    "aten._unique2",
}


class OpsSeen(TorchDispatchMode):
    """Records the name of every aten operation run inside the block."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def test_update_never_reads_a_device_value_on_the_host():
    with OpsSeen() as control:
        float(torch.ones(2).sum())
    assert "aten._local_scalar_dense" in control.names  # the recorder sees host reads
    z1, z2 = two_views(12, seed=8)
    for name, metric, _, arguments, _ in cases(rows=8):  # Uniformity wraps around
        with OpsSeen() as seen:
            metric.update(*arguments(z1, z2))
            metric.update(*arguments(z1[:3], z2[:3]))
        assert not seen.names & HOST_READS, (name, seen.names & HOST_READS)


def test_uniformity_is_the_same_whatever_the_chunk_of_rows():
    units = normalise(two_views(11, seed=9)[0].double())
    weights = (torch.arange(11) % 4 != 0).double()  # some rows do not count
    whole = uniformity_from_rows(units, weights, t=2.0, chunk=1024)
    for chunk in (1, 3, 10):
        assert float(uniformity_from_rows(units, weights, 2.0, chunk)) == pytest.approx(
            float(whole), rel=1e-12
        )
    kept = units[weights.bool()]
    assert float(whole) == pytest.approx(float(uniformity(kept)), rel=1e-12)


def test_uniformity_continues_from_a_synchronised_state_loaded_into_one_rank():
    """What MetricsCallback does on resume: rank 0 gets every rank's stacked buffers."""
    z1, _ = two_views(12, seed=10)
    ranks = [Uniformity(D, max_rows=3), Uniformity(D, max_rows=3)]
    ranks[0].update(z1[:4])  # keeps rows 1..3
    ranks[1].update(z1[4:6])  # keeps rows 4..5
    resumed = Uniformity(D, max_rows=3)
    for name in resumed._defaults:  # the states as a gloo sync leaves them ("cat": stacked)
        setattr(resumed, name, torch.stack([getattr(rank, name) for rank in ranks]))
    resumed.update(z1[6:8])  # rank 0's buffer now holds rows 3, 6, 7
    expected = uniformity(torch.cat([z1[[3, 6, 7]], z1[4:6]]))
    assert float(resumed.compute()) == pytest.approx(float(expected), rel=1e-5)
