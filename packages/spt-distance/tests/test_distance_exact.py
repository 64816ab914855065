"""knn_search(exact_distances=True): one float64 computation per returned pair, rounded once."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spt_distance import METRICS, _exact, _plan, _scores, knn, knn_search

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(params=["host", "device"])
def selection(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both selections: the CPU's, and the sync-free one used off the CPU."""
    if request.param == "device":
        monkeypatch.setattr(_plan, "sync_free", lambda device: True)
    return request.param


def rounded_reference(ref, queries, keys, index, metric):
    """The float64 distance of each (query, index) pair, rounded once to the search's dtype."""
    dtype = torch.float64 if torch.float64 in (queries.dtype, keys.dtype) else torch.float32
    return ref.brute_force(queries, keys, metric).gather(1, index).to(dtype)


@SETTINGS
@given(data=st.data(), metric=st.sampled_from(METRICS), budget=st.sampled_from([None, 1, 4096]))
def test_the_same_neighbours_with_distances_rounded_once_from_float64(
    ref, selection, data, metric, budget
):
    values = data.draw(st.sampled_from([ref.decimals, ref.small_ints]))
    queries, keys, k = data.draw(ref.problems(values, max_keys=60))
    dtype = data.draw(st.sampled_from(ref.dtypes))
    queries, keys = queries.to(dtype), keys.to(dtype)
    plain = knn_search(queries, keys, k, metric, memory_budget=budget)
    distances, index = knn_search(
        queries, keys, k, metric, memory_budget=budget, exact_distances=True
    )
    assert torch.equal(index.sort(dim=1).values, plain[1].sort(dim=1).values)
    expected = rounded_reference(ref, queries, keys, index, metric)
    if metric == "cosine":  # the reference's 1 - cos and the search's chord differ in float64
        torch.testing.assert_close(distances, expected, rtol=2**-23, atol=1e-15)
    else:
        assert torch.equal(distances, expected)
    later = distances[:, 1:], index[:, 1:]
    earlier = distances[:, :-1], index[:, :-1]
    ordered = (later[0] > earlier[0]) | ((later[0] == earlier[0]) & (later[1] > earlier[1]))
    assert bool(ordered.all()), "not sorted by (distance, index)"


@SETTINGS
@given(data=st.data(), metric=st.sampled_from(METRICS))
def test_a_pairs_distance_depends_on_its_two_rows_only(ref, data, metric):
    """Searched among other queries and keys, or alone: the same bits."""
    queries, keys, k = data.draw(ref.problems(max_keys=60))
    queries, keys = queries.float(), keys.float()
    distances, index = knn_search(queries, keys, k, metric, exact_distances=True)
    for row in range(queries.shape[0]):
        for column in range(k):
            key = int(index[row, column])
            alone, _ = knn_search(
                queries[row : row + 1], keys[key : key + 1], 1, metric, exact_distances=True
            )
            assert torch.equal(alone[0, 0], distances[row, column])


def test_each_returned_pair_is_computed_once_and_nothing_is_refined(monkeypatch):
    computed, refined = [], []
    monkeypatch.setattr(_exact, "exact_rows", _recording(_exact.exact_rows, computed))
    monkeypatch.setattr(_scores, "refine_near_zero", lambda *a, **kw: refined.append(a))
    generator = torch.Generator().manual_seed(0)
    keys = torch.randn(500, 16, generator=generator)
    queries = torch.cat((keys[:5], torch.randn(7, 16, generator=generator)))  # exact zeros too
    distances, index = knn_search(queries, keys, 9, exact_distances=True)
    assert refined == []
    assert sum(computed) <= 12 * 10  # the k kept pairs, and the (k+1)-th candidate at most
    assert torch.equal(distances[:5, 0], torch.zeros(5))
    assert torch.equal(index[:5, 0], torch.arange(5))


def test_exact_distances_must_be_a_bool():
    with pytest.raises(TypeError, match="exact_distances must be a bool, got 'yes'"):
        knn_search(torch.zeros(1, 2), torch.zeros(3, 2), 1, exact_distances="yes")


@SETTINGS
@given(
    data=st.data(),
    metric=st.sampled_from(METRICS),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.float64]),
)
def test_a_row_against_its_keys_is_the_pairs_own_arithmetic(ref, data, metric, dtype):
    """Each query row broadcast against its keys gives, bit for bit, the float64 value of
    the pair computed alone (zero rows included)."""
    values = data.draw(st.sampled_from([ref.decimals, ref.small_ints]))
    queries, keys, k = data.draw(ref.problems(values, max_keys=30))
    noise = torch.randn(keys.shape, generator=torch.Generator().manual_seed(k))
    queries, keys = queries.to(dtype), (keys + noise / 7).to(dtype)  # sums that round
    keys[0] = 0
    generator = torch.Generator().manual_seed(keys.shape[0])
    index = torch.randint(0, keys.shape[0], (queries.shape[0], k), generator=generator)
    index[:, 0] = 0
    rows = torch.arange(queries.shape[0]).unsqueeze(1).expand_as(index)
    pairs = _exact.exact_distances(queries, rows.reshape(-1), keys, index.reshape(-1), metric)
    assert torch.equal(_exact.exact_rows(queries, keys, index, metric), pairs.view_as(index))


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("block", [1, 16 * 3, 16 * 9 * 2, 16 * 9 * 40])
def test_the_blocks_of_the_exact_distances_change_no_bit(monkeypatch, metric, block):
    """Single pairs, part of a row, whole rows or every row at once: the same result."""
    generator = torch.Generator().manual_seed(3)
    keys = torch.randn(300, 16, generator=generator)
    queries = torch.cat((keys[:4], torch.randn(33, 16, generator=generator)))
    whole = knn_search(queries, keys, 9, metric, exact_distances=True)
    monkeypatch.setattr(knn, "EXACT_BLOCK", block)
    blocks = []
    monkeypatch.setattr(_exact, "exact_rows", _recording(_exact.exact_rows, blocks))
    distances, index = knn_search(queries, keys, 9, metric, exact_distances=True)
    assert torch.equal(distances, whole[0]) and torch.equal(index, whole[1])
    assert max(blocks) <= max(block // 16, 1)
    assert sum(blocks) in (37 * 9, 37 * 10)  # the k kept pairs, and the (k+1)-th candidate


def _recording(function, sizes):
    def recorded(queries, keys, index, metric):
        sizes.append(index.numel())
        return function(queries, keys, index, metric)

    return recorded
