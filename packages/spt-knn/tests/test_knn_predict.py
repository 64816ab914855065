"""knn_predict and weighted_vote against a float64 reference."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spt_core.testing import captured_logs
from spt_knn import WEIGHTINGS, knn_predict, weighted_vote

METRICS = ("euclidean", "squared_euclidean", "cosine", "manhattan")


@st.composite
def problems(draw):
    """Small integer features (exact distances in float32 except cosine), labels with some
    unlabelled rows, and every argument of the vote."""
    dim = draw(st.integers(1, 4))
    n = draw(st.integers(0, 24))
    b = draw(st.integers(1, 6))
    classes = draw(st.integers(1, 5))
    values = st.integers(-3, 3)
    bank = torch.tensor(draw(st.lists(values, min_size=n * dim, max_size=n * dim)))
    queries = torch.tensor(draw(st.lists(values, min_size=b * dim, max_size=b * dim)))
    labels = torch.tensor(
        draw(st.lists(st.integers(-1, classes - 1), min_size=n, max_size=n)), dtype=torch.long
    )
    return {
        "queries": queries.reshape(b, dim).float(),
        "bank": bank.reshape(n, dim).float(),
        "labels": labels,
        "classes": classes,
        "k": draw(st.integers(1, 8)),
        "temperature": draw(st.floats(0.05, 5.0)),
        "metric": draw(st.sampled_from(METRICS)),
        "weighting": draw(st.sampled_from(WEIGHTINGS)),
        "chunk_size": draw(st.sampled_from([-1, None, 1, 5])),
    }


@settings(max_examples=150, deadline=None)
@given(problems())
def test_scores_match_a_float64_reference(knn_reference, problem):
    queries, bank = problem["queries"], problem["bank"]
    if problem["metric"] == "cosine":  # a constant column keeps every row away from zero
        queries = torch.cat((queries, torch.ones(len(queries), 1)), dim=1)
        bank = torch.cat((bank, torch.ones(len(bank), 1)), dim=1)
    args = (problem["classes"], problem["k"], problem["temperature"], problem["metric"])
    scores = knn_predict(
        queries,
        bank,
        problem["labels"],
        *args,
        weighting=problem["weighting"],
        chunk_size=problem["chunk_size"],
    )
    expected, decided = knn_reference(queries, bank, problem["labels"], *args, problem["weighting"])
    assert scores.dtype == torch.float32
    assert scores.shape == (len(queries), problem["classes"])
    torch.testing.assert_close(scores.sum(dim=1), torch.ones(len(queries)))
    # Where the k-th neighbour ties with the next one, either may be chosen.
    torch.testing.assert_close(scores[decided].double(), expected[decided], rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_unlabelled_rows_are_ignored(weighting):
    generator = torch.Generator().manual_seed(1)
    bank = torch.randn(40, 5, generator=generator)
    labels = torch.randint(0, 3, (40,), generator=generator)
    labels[::3] = -1
    queries = torch.randn(7, 5, generator=generator)
    kept = labels >= 0
    full = knn_predict(queries, bank, labels, 3, k=6, weighting=weighting)
    labelled_only = knn_predict(queries, bank[kept], labels[kept], 3, k=6, weighting=weighting)
    assert torch.equal(full, labelled_only)


def test_k_is_clipped_to_the_labelled_rows_without_a_message():
    generator = torch.Generator().manual_seed(2)
    bank, queries = torch.randn(9, 3, generator=generator), torch.randn(4, 3, generator=generator)
    labels = torch.tensor([0, 1, 2, -1, 0, 1, -1, 2, 0])
    with captured_logs(level="DEBUG") as messages:
        clipped = knn_predict(queries, bank, labels, 3, k=50)
    assert messages == []
    assert torch.equal(clipped, knn_predict(queries, bank, labels, 3, k=7))


def test_a_bank_without_labelled_rows_gives_uniform_scores():
    scores = knn_predict(torch.randn(3, 2), torch.randn(4, 2), torch.full((4,), -1), 4)
    assert torch.equal(scores, torch.full((3, 4), 0.25))
    empty = knn_predict(torch.randn(3, 2), torch.empty(0, 2), torch.empty(0, dtype=torch.long), 2)
    assert torch.equal(empty, torch.full((3, 2), 0.5))


def test_a_label_outside_num_classes_names_the_label_and_the_fix():
    with pytest.raises(ValueError, match=r"label 7, but num_classes gives 5 classes.*at least 8"):
        knn_predict(torch.randn(2, 3), torch.randn(4, 3), torch.tensor([0, 7, 1, -1]), 5)


def test_float_labels_are_refused():
    with pytest.raises(TypeError, match="bank_labels must be an integer tensor"):
        knn_predict(torch.randn(2, 3), torch.randn(4, 3), torch.zeros(4), 5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0}, "k must be an integer >= 1, got 0"),
        ({"k": 2.0}, "k must be an integer >= 1"),
        ({"temperature": 0.0}, "temperature must be a finite number > 0, got 0.0"),
        ({"temperature": float("inf")}, "temperature"),
        ({"chunk_size": 0}, r"chunk_size must be -1 \(one block\), None"),
        ({"chunk_size": -5}, "chunk_size"),
        ({"distance_metric": "l2"}, r"distance_metric must be one of \('euclidean'"),
        ({"weighting": "softmax"}, r"weighting must be one of \('inverse', 'exp', 'uniform'\)"),
        ({"num_classes": 0}, "num_classes must be an integer >= 1, got 0"),
    ],
)
def test_bad_arguments_name_the_argument_and_the_allowed_values(kwargs, match):
    arguments = {"num_classes": 3, **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        knn_predict(torch.randn(2, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), **arguments)


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="same D"):
        knn_predict(torch.randn(2, 3), torch.randn(4, 5), torch.zeros(4, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="one label per bank row"):
        knn_predict(torch.randn(2, 3), torch.randn(4, 3), torch.zeros(3, dtype=torch.long), 2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_half_precision_features_score_like_their_float32_values(dtype, weighting):
    generator = torch.Generator().manual_seed(3)
    bank = torch.randn(64, 16, generator=generator).to(dtype)
    queries = torch.randn(8, 16, generator=generator).to(dtype)
    labels = torch.randint(0, 4, (64,), generator=generator)
    half = knn_predict(queries, bank, labels, 4, k=7, weighting=weighting, temperature=0.5)
    full = knn_predict(
        queries.float(), bank.float(), labels, 4, k=7, weighting=weighting, temperature=0.5
    )
    assert half.dtype == torch.float32
    assert torch.equal(half, full)


@pytest.mark.parametrize("metric", METRICS)
def test_a_querys_scores_do_not_depend_on_the_rest_of_its_batch(metric):
    generator = torch.Generator().manual_seed(5)
    bank, queries = (
        torch.randn(300, 24, generator=generator),
        torch.randn(33, 24, generator=generator),
    )
    labels = torch.randint(0, 4, (300,), generator=generator)
    together = knn_predict(queries, bank, labels, 4, k=9, distance_metric=metric)
    alone = torch.cat(
        [knn_predict(q[None], bank, labels, 4, k=9, distance_metric=metric) for q in queries]
    )
    assert torch.equal(together, alone)


def test_chunked_search_gives_the_same_scores():
    generator = torch.Generator().manual_seed(4)
    bank, queries = torch.randn(50, 6, generator=generator), torch.randn(5, 6, generator=generator)
    labels = torch.randint(0, 3, (50,), generator=generator)
    whole = knn_predict(queries, bank, labels, 3, k=9, chunk_size=-1)
    assert torch.equal(knn_predict(queries, bank, labels, 3, k=9, chunk_size=7), whole)


def test_exp_weights_of_far_neighbours_do_not_underflow():
    distances = torch.tensor([[1000.0, 1000.5, 1003.0]])
    scores = weighted_vote(distances, torch.tensor([[0, 1, 1]]), 2, 0.07, "exp")
    assert torch.isfinite(scores).all()
    assert scores[0, 0] > 0.99
    torch.testing.assert_close(scores.sum(), torch.tensor(1.0))


def test_padding_neighbours_cast_no_vote():
    distances = torch.tensor([[0.5, float("inf"), 0.1], [float("inf"), float("inf"), 1.0]])
    labels = torch.tensor([[1, -1, 0], [-1, -1, -1]])
    for weighting in WEIGHTINGS:
        scores = weighted_vote(distances, labels, 2, 0.1, weighting)
        assert scores[0].gt(0).all()
        assert torch.equal(scores[1], torch.tensor([0.5, 0.5]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("metric", METRICS)
def test_cuda_tensors_score_like_cpu_tensors(metric):
    generator = torch.Generator().manual_seed(6)
    bank, queries = (
        torch.randn(500, 32, generator=generator),
        torch.randn(40, 32, generator=generator),
    )
    labels = torch.randint(-1, 5, (500,), generator=generator)
    cpu = knn_predict(queries, bank, labels, 5, k=10, distance_metric=metric)
    gpu = knn_predict(queries.cuda(), bank.cuda(), labels.cuda(), 5, k=10, distance_metric=metric)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-6)
