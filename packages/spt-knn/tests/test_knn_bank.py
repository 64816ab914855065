"""knn_bank: the rows that vote, checked once; knn_predict on a KNNBank is the same vote,
without a host sync; OnlineKNN scores its batches with knn_predict itself."""

import contextlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import spt_knn.online_knn
from spt_core import distributed
from spt_core.testing import forbid_host_sync
from spt_distance import _plan
from spt_knn import KNNBank, OnlineKNN, RoundShape, knn_bank, knn_predict

METRICS = ("euclidean", "squared_euclidean", "cosine", "manhattan")


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(0, 30),
    classes=st.integers(1, 4),
    k=st.integers(1, 9),
    metric=st.sampled_from(METRICS),
    weighting=st.sampled_from(("inverse", "exp", "uniform")),
    seed=st.integers(0, 2**16),
)
def test_a_prepared_bank_votes_as_the_bank_tensor(n, classes, k, metric, weighting, seed):
    generator = torch.Generator().manual_seed(seed)
    bank = torch.randn(n, 5, generator=generator)
    labels = torch.randint(-1, classes, (n,), generator=generator)
    queries = torch.randn(4, 5, generator=generator)
    arguments = {"k": k, "distance_metric": metric, "weighting": weighting, "temperature": 0.3}
    expected = knn_predict(queries, bank, labels, classes, **arguments)
    prepared = knn_bank(bank, labels, classes)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_plan, "sync_free", lambda device: True)  # the search off the CPU
        with forbid_host_sync():
            scores = knn_predict(queries, prepared, **arguments)
    assert torch.equal(scores, expected)


def test_the_bank_leaves_out_unlabelled_and_non_finite_rows_in_order():
    rows = torch.arange(12.0).reshape(6, 2)
    rows[1, 0], rows[4, 1] = float("nan"), float("-inf")
    labels = torch.tensor([[2], [0], [-1], [1], [1], [0]], dtype=torch.int32)  # (N, 1) is fine
    bank = knn_bank(rows, labels)
    assert bank.features.tolist() == [[0.0, 1.0], [6.0, 7.0], [10.0, 11.0]]
    assert bank.labels.tolist() == [2, 1, 0] and bank.labels.dtype == torch.int64
    assert (bank.size, bank.non_finite, bank.num_classes) == (3, 2, 3)  # num_classes inferred
    queries = torch.tensor([[2.0, 3.0]])
    assert torch.equal(
        knn_predict(queries, rows, labels, 3, k=2),
        knn_predict(queries, rows[[0, 3, 5]], labels[[0, 3, 5]], 3, k=2),
    )  # knn_predict leaves out the non-finite rows too (their neighbours meant nothing)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: knn_bank(torch.zeros(3, 2), torch.tensor([0, 5, 1]), 5), ValueError, "label 5"),
        (lambda: knn_bank(torch.zeros(3, 2), torch.zeros(3)), TypeError, "integer tensor"),
        (lambda: knn_bank(torch.zeros(3, 2), torch.zeros(2).long()), ValueError, "one label"),
        (lambda: knn_bank(torch.zeros(3), torch.zeros(3).long()), ValueError, "one label"),
        (lambda: knn_bank(torch.zeros(1, 2), torch.zeros(1).long(), 0), ValueError, "num_class"),
        (lambda: knn_bank(torch.zeros(1, 2), torch.zeros(1).long(), 2.0), TypeError, "num_class"),
    ],
)
def test_bad_banks_are_refused_with_the_same_exception_as_knn_predict(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_knn_predict_takes_labels_with_a_tensor_and_none_with_a_bank():
    bank = knn_bank(torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 0]), 2)
    with pytest.raises(TypeError, match="a KNNBank carries its labels and num_classes"):
        knn_predict(torch.randn(2, 3), bank, bank.labels, 2)
    with pytest.raises(TypeError, match="a bank tensor needs its bank_labels and num_classes"):
        knn_predict(torch.randn(2, 3), bank.features)
    with pytest.raises(ValueError, match="no label to infer num_classes"):
        knn_predict(torch.randn(2, 3), knn_bank(torch.randn(2, 3), torch.tensor([-1, -1])))


class FakeRanks:
    """Three ranks as spt_core.distributed shows them: the summaries of the other two are
    this one's with more rows (3 + 4 labelled, the largest label 6, 1 + 2 non-finite)."""

    def __init__(self, monkeypatch):
        monkeypatch.setattr(distributed, "is_distributed", lambda: True)
        monkeypatch.setattr(distributed, "rank", lambda: 1)
        monkeypatch.setattr(distributed, "gather_uneven", self.gather)

    def gather(self, tensor):
        other = torch.tensor([[3, 6, 1], [4, 2, 2]], dtype=tensor.dtype)
        return torch.cat((other[:1], tensor, other[1:]))


def test_a_sharded_bank_counts_every_rank_and_searches_only_in_rounds(monkeypatch):
    rows, labels = torch.randn(4, 3), torch.tensor([0, -1, 2, 1])
    FakeRanks(monkeypatch)
    bank = knn_bank(rows, labels, sharded=True)
    assert (bank.size, bank.num_classes, bank.non_finite) == (3 + 3 + 4, 7, 3)
    assert bank.features.shape == (3, 3)  # this rank's rows only
    with pytest.raises(RuntimeError, match=r"one rank's shard .*\.in_rounds"):
        knn_predict(torch.randn(2, 3), bank)
    rounds = RoundShape(queries=2, rows=2, dim=3, dtype=torch.float32)
    assert bank.in_rounds(rounds).rounds == rounds and bank.rounds is None


def test_online_knn_scores_each_batch_with_knn_predict_on_its_bank(tiny, monkeypatch):
    """The callback is thin: the scores it writes are what knn_predict returned for them."""
    calls = []

    def recorded(queries, bank, *args, **kwargs):
        scores = knn_predict(queries, bank, *args, **kwargs)
        calls.append((queries, bank, kwargs, scores))
        return scores

    monkeypatch.setattr(spt_knn.online_knn, "knn_predict", recorded)
    monkeypatch.setattr(_plan, "sync_free", lambda device: True)  # the search off the CPU
    features, labels = tiny.data(64, 4, 3)
    val_x, val_y = tiny.data(24, 4, 3, seed=1)
    written = []

    class Watch(OnlineKNN):
        def _eval_batch_end(self, trainer, pl_module, stage, outputs, batch, dataloader_idx):
            with forbid_host_sync() if written else contextlib.nullcontext():
                super()._eval_batch_end(trainer, pl_module, stage, outputs, batch, dataloader_idx)
            written.append(batch["knn_preds"])

    knn = Watch("knn", "embedding", "label", 32, None, num_classes=3)
    tiny.trainer([knn]).fit(tiny.model(), tiny.loader(features, labels), tiny.loader(val_x, val_y))
    assert len(calls) == len(written) == 3
    for (_, bank, kwargs, scores), preds in zip(calls, written, strict=True):
        assert isinstance(bank, KNNBank) and bank.size == 32
        assert kwargs == {
            "k": 5, "temperature": 0.07, "distance_metric": "euclidean",
            "weighting": "inverse", "chunk_size": -1,
        }  # fmt: skip
        assert scores is preds
    assert torch.equal(calls[0][0], val_x[:8])
