"""kNN sweeps (#15.2): every (k, T) pair from one search equals a separate evaluation."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.pytorch.callbacks import Callback
from torchmetrics.classification import MulticlassAccuracy

import spt_knn.bank
from spt_core import callbacks_metrics
from spt_core.testing import RecordingLogger
from spt_distance import pairwise_distances
from spt_knn import OnlineKNN, knn_predict, parse_sweep

METRICS = ("euclidean", "squared_euclidean", "cosine", "manhattan")


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    rows=st.integers(0, 40),
    ks=st.lists(st.integers(1, 45), min_size=1, max_size=4, unique=True),
    temperatures=st.lists(
        st.sampled_from([0.01, 0.07, 0.1, 0.5, 2.0]), min_size=1, max_size=3, unique=True
    ),
    metric=st.sampled_from(METRICS),
    weighting=st.sampled_from(("inverse", "exp", "uniform")),
    chunk_size=st.sampled_from((-1, 7)),
)
def test_a_knn_predict_sweep_equals_separate_calls(
    seed, rows, ks, temperatures, metric, weighting, chunk_size
):
    generator = torch.Generator().manual_seed(seed)
    bank = torch.randn(rows, 5, generator=generator).round(decimals=1)  # ties included
    labels = torch.randint(-1, 4, (rows,), generator=generator)
    labels[:1] = 3  # at least one label: num_classes is given anyway
    queries = torch.randn(6, 5, generator=generator)
    kwargs = {"distance_metric": metric, "weighting": weighting, "chunk_size": chunk_size}
    sweep = knn_predict(queries, bank, labels, 4, k=ks, temperature=temperatures, **kwargs)
    assert list(sweep) == [(k, float(t)) for k in ks for t in temperatures]
    for (k, t), scores in sweep.items():
        alone = knn_predict(queries, bank, labels, 4, k=k, temperature=t, **kwargs)
        # Where two labelled rows tie at the k-th place, either one makes a correct k-nearest
        # set; a sweep and a single k may keep different ones. Elsewhere: equal.
        clear = ~ties_at_place(queries, bank[labels >= 0], k, metric)
        assert torch.equal(scores[clear], alone[clear]), (k, t)


def ties_at_place(queries, bank, k, metric):
    """Which queries have their k-th and (k+1)-th nearest rows at the same distance, up to a
    relative 1e-5: knn_search ranks rows by float32 scores, so rows closer than their rounding
    (about 1e-7 times the feature count, see spt-distance's README) count as tied."""
    if len(bank) <= k:
        return torch.zeros(len(queries), dtype=torch.bool)
    distances = pairwise_distances(queries.double(), bank.double(), metric=metric)
    ordered = distances.sort(dim=1).values
    gap = (ordered[:, k] - ordered[:, k - 1]).abs()
    return gap <= 1e-5 * ordered[:, k].abs().clamp(min=1.0)


def test_a_sweep_runs_one_search_at_the_largest_k(monkeypatch):
    searched = []
    original = spt_knn.bank.knn_neighbours

    def counted(queries, bank, labels, k, *args):
        searched.append(k)
        return original(queries, bank, labels, k, *args)

    monkeypatch.setattr(spt_knn.bank, "knn_neighbours", counted)
    bank, labels = torch.randn(50, 3), torch.arange(50) % 3
    knn_predict(torch.randn(4, 3), bank, labels, 3, k=(10, 20, 40, 5), temperature=(0.07, 0.1))
    assert searched == [40]


def test_scalar_arguments_keep_a_tensor_and_one_element_tuples_give_a_dict():
    bank, labels = torch.randn(20, 3), torch.arange(20) % 2
    queries = torch.randn(4, 3)
    scalar = knn_predict(queries, bank, labels, 2, k=5, temperature=0.1)
    assert isinstance(scalar, torch.Tensor)
    assert knn_predict(queries, bank, labels, 2, k=(5,), temperature=0.1).keys() == {(5, 0.1)}
    assert torch.equal(knn_predict(queries, bank, labels, 2, k=[5], temperature=[0.1])[5, 0.1],
                       scalar)  # fmt: skip


@pytest.mark.parametrize(
    ("k", "temperature", "error", "message"),
    [
        ((), 0.1, ValueError, r"^k must be a value or a non-empty tuple/list of values, got \(\)"),
        ([], 0.1, ValueError, r"^k must be a value or a non-empty tuple/list of values, got \[\]"),
        ((5, 10, 5), 0.1, ValueError, r"^k must not repeat a value, got \(5, 10, 5\)"),
        ((5, 0), 0.1, ValueError, r"^k\[1\] must be an integer >= 1, got 0"),
        (0, 0.1, ValueError, r"^k must be an integer >= 1, got 0"),
        ((5, 2.0), 0.1, TypeError, r"^k\[1\] must be an integer >= 1, got 2.0"),
        (5, (), ValueError, r"^temperature must be a value or a non-empty tuple/list"),
        (5, (0.1, 0.1), ValueError, r"^temperature must not repeat a value"),
        (5, (1, 1.0), ValueError, r"^temperature must not repeat a value"),
        (5, (0.1, 0.0), ValueError, r"^temperature\[1\] must be a finite number > 0, got 0.0"),
        (5, (0.1, -1), ValueError, r"^temperature\[1\] must be a finite number > 0, got -1"),
        (5, -0.5, ValueError, r"^temperature must be a finite number > 0, got -0.5"),
        (5, ("a",), TypeError, r"^temperature\[0\] must be a finite number > 0, got 'a'"),
    ],
)
def test_bad_sweeps_name_the_argument(make_knn, k, temperature, error, message):
    bank, labels = torch.randn(20, 3), torch.arange(20) % 2
    with pytest.raises(error, match=message):
        knn_predict(torch.randn(2, 3), bank, labels, 2, k=k, temperature=temperature)
    with pytest.raises(error, match=r"^OnlineKNN\[name=knn\]: " + message[1:]):
        make_knn(k=k, temperature=temperature)


def test_logged_name_suffixes():
    sweep = parse_sweep((10, 20), (0.07, 0.1, 1, 1e-5))
    assert [sweep.suffix(p) for p in sweep.pairs[:4]] == [
        "_k10_t0.07", "_k10_t0.1", "_k10_t1.0", "_k10_t1e-05"
    ]  # fmt: skip
    assert parse_sweep((10,), 0.07).suffix((10, 0.07)) == "_k10"
    assert parse_sweep(10, (0.07,)).suffix((10, 0.07)) == "_k10"
    assert parse_sweep(10, (0.07, 0.5)).suffix((10, 0.5)) == "_k10_t0.5"
    assert parse_sweep(10, 0.07).suffix((10, 0.07)) == ""


class Preds(Callback):
    def __init__(self):
        self.preds = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, *args):
        self.preds.append(batch["sweep_preds"])


def _knn(name, k, t):
    metrics = {
        "accuracy": MulticlassAccuracy(3, average="micro"),
        "top2": MulticlassAccuracy(3, top_k=2),
    }
    return OnlineKNN(
        name, "embedding", "label", 32, metrics, num_classes=3, k=k, temperature=t,
        weighting="exp",
    )  # fmt: skip


def test_a_sweep_callback_logs_what_separate_callbacks_log(tiny, messages):
    """Two validation loaders, k=40 beyond the 32 queue rows (clipped with one warning), two
    metrics: every pair's values equal those of its own OnlineKNN on the same queue."""
    features, labels = tiny.data(64, 4, 3)
    val_x, val_y = tiny.data(24, 4, 3, 1)
    noisy = [val_x + 2.5 * torch.randn(val_x.shape, generator=torch.Generator().manual_seed(s))
             for s in (0, 1)]  # fmt: skip
    ks, temperatures = (3, 40, 9), (0.1, 0.5)
    sweep = _knn("sweep", ks, temperatures)
    separate = {(k, t): _knn(f"k{k}t{t}".replace(".", "_"), k, t) for k in ks for t in temperatures}
    logger, preds = RecordingLogger(), Preds()
    trainer = tiny.trainer([sweep, *separate.values(), preds], max_epochs=2, logger=logger,
                           log_every_n_steps=1)  # fmt: skip
    trainer.fit(tiny.model(), tiny.loader(features, labels),
                [tiny.loader(x, val_y) for x in noisy])  # fmt: skip
    logged = logger.logged()
    values = set()
    for (k, t), alone in separate.items():
        for metric in ("accuracy", "top2"):
            for idx in (0, 1):
                mine = logged[f"eval/sweep_{metric}_k{k}_t{t}/dataloader_idx_{idx}"]
                theirs = logged[f"eval/{alone.name}_{metric}/dataloader_idx_{idx}"]
                assert mine == theirs and len(mine) == 2
                values.add(tuple(mine))
    assert len(values) > 3  # the pairs differ, so a mix-up would show
    assert not any(name.startswith("eval/sweep_accuracy/") for name in logged)
    assert len([m for m in messages if "OnlineKNN[name=sweep]: k=40 exceeds the 32" in m]) == 2
    # Predictions: one dict per batch, every pair's scores.
    assert all(set(p) == set(separate) for p in preds.preds)
    exposed = callbacks_metrics(trainer.lightning_module)["sweep"]
    assert "val/1/k40_t0.5" in exposed and "val/0" not in exposed
    assert len(exposed) == 2 * len(separate)


def test_several_ks_beyond_the_bank_are_named_in_one_warning(tiny, messages, make_knn):
    features, labels = tiny.data(64, 4, 3)
    trainer = tiny.trainer([make_knn(k=(5, 40, 50))])
    trainer.fit(tiny.model(), tiny.loader(features, labels), tiny.loader(features, labels))
    assert len([m for m in messages if "k=(40, 50) exceeds the 32 labelled rows" in m]) == 1
    assert (
        trainer.callback_metrics["eval/knn_accuracy_k40"]
        == (trainer.callback_metrics["eval/knn_accuracy_k50"])
    )
