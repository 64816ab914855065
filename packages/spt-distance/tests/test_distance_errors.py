import pytest
import torch

from spt_distance import METRICS, knn_search, pairwise_distances, plan_chunks

KEYS = torch.zeros(10, 3)
QUERIES = torch.zeros(4, 3)


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda: knn_search(QUERIES, KEYS, 0), ValueError, ["k", "k=0", "1 <= k"]),
        (lambda: knn_search(QUERIES, KEYS, 11), ValueError, ["k", "k=11", "(10)"]),
        (lambda: knn_search(QUERIES, KEYS, 2.0), TypeError, ["k", "2.0", "int"]),
        (lambda: knn_search(QUERIES, KEYS, True), TypeError, ["k", "True", "int"]),
        (
            lambda: knn_search(QUERIES, KEYS, 2, "cosin"),
            ValueError,
            ["metric", "'cosin'", "manhattan"],
        ),
        (lambda: knn_search(QUERIES, KEYS, 2, None), ValueError, ["metric", "None", "euclidean"]),
        (
            lambda: knn_search(torch.zeros(4, 2), KEYS, 2),
            ValueError,
            ["queries", "keys", "(4, 2)", "(10, 3)", "features"],
        ),
        (lambda: knn_search(torch.zeros(3), KEYS, 2), ValueError, ["queries", "2D", "(3,)"]),
        (
            lambda: knn_search(QUERIES, torch.zeros(2, 5, 3), 2),
            ValueError,
            ["keys", "2D", "(2, 5, 3)"],
        ),
        (lambda: knn_search(QUERIES, KEYS.long(), 2), TypeError, ["keys", "floating", "int64"]),
        (lambda: knn_search(QUERIES.tolist(), KEYS, 2), TypeError, ["queries", "Tensor", "list"]),
        (lambda: knn_search(QUERIES, KEYS, 2, chunk_size=0), ValueError, ["chunk_size", "0", "-1"]),
        (
            lambda: knn_search(QUERIES, KEYS, 2, chunk_size=-5),
            ValueError,
            ["chunk_size", "-5", "-1"],
        ),
        (lambda: knn_search(QUERIES, KEYS, 2, chunk_size=2.5), TypeError, ["chunk_size", "2.5"]),
        (lambda: knn_search(QUERIES, KEYS, 2, memory_budget=0), ValueError, ["memory_budget", "0"]),
        (
            lambda: knn_search(QUERIES, KEYS, 2, memory_budget="1G"),
            TypeError,
            ["memory_budget", "'1G'"],
        ),
        (lambda: pairwise_distances(QUERIES, KEYS, "l2"), ValueError, ["metric", "'l2'", "cosine"]),
        (lambda: pairwise_distances(QUERIES, torch.zeros(5, 4)), ValueError, ["x", "y", "(5, 4)"]),
        (lambda: pairwise_distances(QUERIES.int(), KEYS), TypeError, ["x", "floating", "int32"]),
        (lambda: knn_search(QUERIES, KEYS.to("meta"), 2), ValueError, ["same device", "meta"]),
        (lambda: plan_chunks(4, 10, 3, 2, chunk_size=0), ValueError, ["chunk_size", "0"]),
        (lambda: plan_chunks(4, 10, 3, 11), ValueError, ["k", "11", "(10)"]),
        (lambda: plan_chunks(4, 0, 3, 1), ValueError, ["n_keys", ">= 1", "0"]),
        (lambda: plan_chunks(-1, 10, 3, 2), ValueError, ["n_queries", ">= 0", "-1"]),
        (lambda: plan_chunks(4.5, 10, 3, 2), TypeError, ["n_queries", "4.5"]),
        (lambda: plan_chunks(4, 10, "3", 2), TypeError, ["dim", "'3'"]),
        (lambda: plan_chunks(4, 10, 3, None), TypeError, ["k", "None"]),
        (  # was taken as is, sizing the plan for no known dtype
            lambda: plan_chunks(4, 10, 3, 2, dtype="float32"),
            TypeError,
            ["dtype", "torch.dtype", "'float32'"],
        ),
        (lambda: plan_chunks(4, 10, 3, 2, dtype=torch.int64), ValueError, ["dtype", "floating"]),
        (  # was torch's RuntimeError
            lambda: plan_chunks(4, 10, 3, 2, device="no-such-device"),
            ValueError,
            ["device", "'no-such-device'"],
        ),
        (lambda: plan_chunks(4, 10, 3, 2, device=0.0), TypeError, ["device", "str", "0.0"]),
    ],
)
def test_bad_arguments_are_named_with_their_value_and_what_is_allowed(call, error, words):
    with pytest.raises(error) as caught:
        call()
    for word in words:
        assert word in str(caught.value), (word, str(caught.value))


def test_metrics_are_exported_for_validation():
    assert METRICS == ("euclidean", "squared_euclidean", "cosine", "manhattan")
