"""The per-batch kNN functions check their arguments from Python values and shapes only: a
bad argument is named before anything reaches the device (no host sync), and the range of
``k`` is the one each function documents. Every argument's fault is in
``integration_tests/test_one_rule_per_fault.py``."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spt_core.testing import forbid_host_sync
from spt_knn import (
    knn_bank,
    knn_neighbours,
    merge_candidates,
    sharded_neighbours,
    weighted_vote,
)

ROWS = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
LABELS = torch.tensor([0, 1, 2, 0, 1, 2])
CANDIDATES = torch.sort(ROWS, dim=1).values
CANDIDATE_LABELS = torch.zeros(6, 3, dtype=torch.long)

BAD_CALLS = {
    "knn_neighbours labels": (
        lambda: knn_neighbours(ROWS, ROWS, LABELS[:4], 2),
        ValueError,
        r"knn_neighbours: labels must have shape \(6,\) \(one per row of bank\), got \(4,\)",
    ),
    "knn_neighbours width": (
        lambda: knn_neighbours(ROWS, ROWS[:, :2], LABELS, 2),
        ValueError,
        "knn_neighbours: queries and bank must have as many features per row",
    ),
    "knn_neighbours float labels": (
        lambda: knn_neighbours(ROWS, ROWS, LABELS.float(), 2),
        TypeError,
        "knn_neighbours: labels must be an integer tensor, got torch.float32",
    ),
    "merge_candidates k": (
        lambda: merge_candidates(CANDIDATES, CANDIDATE_LABELS, 4),
        ValueError,
        "merge_candidates: k must be at most the 3 candidates per row, got 4",
    ),
    "merge_candidates keys": (
        lambda: merge_candidates(CANDIDATES, CANDIDATE_LABELS, 2, CANDIDATE_LABELS[:, :2]),
        ValueError,
        r"merge_candidates: keys must have the shape of distances \(6, 3\), got \(6, 2\)",
    ),
    "sharded_neighbours rows": (
        lambda: sharded_neighbours(ROWS, ROWS, LABELS, 2, rows=4),
        ValueError,
        "sharded_neighbours: a batch of 6 query rows exceeds the rows=4",
    ),
    "weighted_vote labels": (
        lambda: weighted_vote(CANDIDATES, CANDIDATE_LABELS.float(), 3),
        TypeError,
        "weighted_vote: labels must be an integer tensor",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_CALLS))
def test_a_bad_argument_is_named_before_anything_waits_for_the_device(name):
    call, error, match = BAD_CALLS[name]
    with forbid_host_sync(), pytest.raises(error, match=match):
        call()


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(0, 6),
    k=st.integers(-2, 8),
    seed=st.integers(0, 2**16),
)
def test_merge_candidates_keeps_any_k_from_zero_to_the_candidates(width, k, seed):
    g = torch.Generator().manual_seed(seed)
    distances = torch.rand(4, width, generator=g)
    labels = torch.randint(0, 3, (4, width), generator=g)
    if not 0 <= k <= width:
        with pytest.raises(ValueError, match=f"merge_candidates: k must be .*got {k}"):
            merge_candidates(distances, labels, k)
        return
    kept, kept_labels = merge_candidates(distances, labels, k)
    order = torch.sort(distances, dim=1, stable=True).indices[:, :k]  # the reference
    assert torch.equal(kept, distances.gather(1, order))
    assert torch.equal(kept_labels, labels.gather(1, order))


def test_zero_neighbours_is_an_empty_search_and_a_negative_k_is_refused():
    distances, labels = knn_neighbours(ROWS, ROWS, LABELS, 0)
    assert distances.shape == labels.shape == (6, 0)
    with pytest.raises(ValueError, match="knn_neighbours: k must be an integer >= 0, got -1"):
        knn_neighbours(ROWS, ROWS, LABELS, -1)


def test_without_a_process_group_sharded_neighbours_checks_its_rows_too():
    """The rows every rank sends per round bound the batch on one process as on several, so
    a run that would fail under DDP fails in a single-process test first."""
    distances, _ = sharded_neighbours(ROWS, ROWS, LABELS, 2, rows=6)
    assert distances.shape == (6, 2)
    with pytest.raises(ValueError, match="exceeds the rows=5"):
        sharded_neighbours(ROWS, ROWS, LABELS, 2, rows=5)


def test_knn_bank_checks_keys_even_without_sharded_and_sharded_is_a_bool():
    assert knn_bank(ROWS, LABELS, keys=torch.arange(6)).keys is None  # ignored, but checked
    with pytest.raises(ValueError, match=r"knn_bank: keys must have shape \(6,\)"):
        knn_bank(ROWS, LABELS, keys=torch.arange(5))
    with pytest.raises(TypeError, match="knn_bank: sharded must be a bool, got 1"):
        knn_bank(ROWS, LABELS, sharded=1)
