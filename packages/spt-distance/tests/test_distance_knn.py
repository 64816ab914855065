import weakref

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from spt_core.testing import HostSyncError, forbid_host_sync
from spt_distance import DEFAULT_MEMORY_BUDGET, METRICS, _plan, _select, knn_search, plan_chunks

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
CHUNKS = st.sampled_from([None, -1, 1, 2, 3, 5, 8, 1000])
TILES = st.sampled_from([1, 2, 3, 4, 7, 1024])


@pytest.fixture(autouse=True, params=["host", "device"])
def selection(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with the CPU's selection and with the sync-free one used off the CPU."""
    if request.param == "device":
        monkeypatch.setattr(_plan, "sync_free", lambda device: True)
    return request.param


@SETTINGS
@given(data=st.data(), metric=st.sampled_from(METRICS), chunk_size=CHUNKS, tile_size=TILES)
def test_knn_matches_float64_brute_force(ref, tile, data, metric, chunk_size, tile_size):
    tile(tile_size)
    queries, keys, k = data.draw(ref.problems())
    dtype = data.draw(st.sampled_from(ref.dtypes))
    queries, keys = queries.to(dtype), keys.to(dtype)
    result = knn_search(queries, keys, k, metric, chunk_size=chunk_size)
    ref.assert_valid_knn(queries, keys, k, metric, result)


@SETTINGS
@given(data=st.data(), metric=st.sampled_from(METRICS), tile_size=TILES)
def test_knn_every_chunk_size_gives_the_unchunked_result(ref, tile, data, metric, tile_size):
    tile(tile_size)
    values = data.draw(st.sampled_from([ref.decimals, ref.small_ints]))
    queries, keys, k = data.draw(ref.problems(values, max_keys=60))
    queries, keys = queries.float(), keys.float()
    unchunked = knn_search(queries, keys, k, metric, chunk_size=-1)
    for chunk_size in (None, 1, 2, 3, 4, 5, 9, 16, keys.shape[0]):
        ref.assert_identical(knn_search(queries, keys, k, metric, chunk_size=chunk_size), unchunked)


@SETTINGS
@given(
    data=st.data(),
    metric=st.sampled_from(["euclidean", "squared_euclidean", "manhattan"]),
    chunk_size=CHUNKS,
    tile_size=TILES,
    budget=st.sampled_from([None, 1, 4096]),
)
def test_knn_exact_ties_go_to_the_smaller_index(
    ref, tile, data, metric, chunk_size, tile_size, budget
):
    """Small integers make every distance exact, so the answer is fully determined."""
    tile(tile_size)
    queries, keys, k = data.draw(ref.problems(ref.small_ints, max_keys=60))
    queries, keys = queries.float(), keys.float()
    distances, index = knn_search(
        queries, keys, k, metric, chunk_size=chunk_size, memory_budget=budget
    )
    exact = "squared_euclidean" if metric == "euclidean" else metric
    expected_distances, expected_index = ref.reference_knn(queries, keys, k, exact)
    assert torch.equal(index, expected_index)
    expected_distances = expected_distances.float()
    if metric == "euclidean":
        expected_distances = expected_distances.sqrt()
    assert torch.equal(distances, expected_distances)


@pytest.mark.parametrize("metric", ["euclidean", "squared_euclidean", "manhattan"])
@pytest.mark.parametrize("k", [1, 7, 60])
def test_knn_exact_ties_in_large_chunks(ref, tile, metric, k):
    """Enough keys for the group-minimum prefilter, few distinct values: ties everywhere."""
    tile(64)
    generator = torch.Generator().manual_seed(k)
    keys = torch.randint(-2, 3, (3000, 3), generator=generator).float()
    queries = torch.randint(-2, 3, (9, 3), generator=generator).float()
    exact = "squared_euclidean" if metric == "euclidean" else metric
    expected_distances, expected_index = ref.reference_knn(queries, keys, k, exact)
    expected_distances = expected_distances.float()
    if metric == "euclidean":
        expected_distances = expected_distances.sqrt()
    for chunk_size in (None, 64, 1000, -1):
        distances, index = knn_search(queries, keys, k, metric, chunk_size=chunk_size)
        assert torch.equal(index, expected_index)
        assert torch.equal(distances, expected_distances)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("chunk_size", [None, 3, -1])
def test_knn_all_keys_tied_returns_the_first_indices(tile, metric, chunk_size):
    tile(4)
    keys = torch.tensor([[0.3, -1.7, 2.9]]).repeat(50, 1)
    queries = torch.tensor([[0.0, 0.0, 0.0], [0.3, -1.7, 2.9], [1.0, 2.0, 3.0]])
    distances, index = knn_search(queries, keys, 7, metric, chunk_size=chunk_size)
    assert torch.equal(index, torch.arange(7).repeat(3, 1))
    assert bool((distances == distances[:, :1]).all())
    assert bool((distances[1] == 0).all())
    if metric == "cosine":
        assert bool((distances[0] == 1).all())


def test_knn_cosine_zero_vectors(tile):
    tile(2)
    keys = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    queries = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    distances, index = knn_search(queries, keys, 5, "cosine", chunk_size=2)
    assert not bool(distances.isnan().any())
    assert torch.equal(index, torch.tensor([[0, 1, 2, 3, 4], [1, 0, 2, 3, 4]]))
    expected = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0, 2.0]])
    assert torch.equal(distances, expected)


@SETTINGS
@given(
    n_queries=st.integers(1, 8),
    n_keys=st.integers(1, 300),
    dim=st.integers(1, 200),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
    offset=st.sampled_from([0.0, 100.0]),
    metric=st.sampled_from(METRICS),
    seed=st.integers(0, 2**31 - 1),
)
def test_knn_identical_rows_are_at_exactly_zero(
    n_queries, n_keys, dim, scale, offset, metric, seed
):
    generator = torch.Generator().manual_seed(seed)
    keys = torch.randn(n_keys, dim, generator=generator) * scale + offset
    queries = keys[torch.randint(n_keys, (n_queries,), generator=generator)]
    k = min(3, n_keys)
    distances, index = knn_search(queries, keys, k, metric)
    identical = (keys[index] == queries.unsqueeze(1)).all(dim=2)
    assert bool((distances[identical] == 0).all())
    if metric != "cosine":
        assert torch.equal(identical, distances == 0)
    if offset == 0 or metric != "cosine":
        # The copy is found: the euclidean scores take the common offset out first. (Cosine
        # is not offset-invariant: near a common direction, keys closer than the product's
        # rounding error are ranked by the rounded score, as documented.)
        assert bool((distances[:, 0] == 0).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("tile_size", [5, 16, 1024])
def test_knn_low_precision_equals_float32_search_on_upcast_values(tile, dtype, metric, tile_size):
    tile(tile_size)
    generator = torch.Generator().manual_seed(1)
    keys = torch.randn(300, 32, generator=generator).to(dtype)
    queries = torch.randn(20, 32, generator=generator).to(dtype)
    keys[7] = keys[11]
    for chunk_size in (None, 64):
        low = knn_search(queries, keys, 10, metric, chunk_size=chunk_size)
        high = knn_search(queries.float(), keys.float(), 10, metric, chunk_size=chunk_size)
        assert low[0].dtype == torch.float32
        torch.testing.assert_close(low, high, rtol=0, atol=0)


def test_knn_float64_inputs_search_in_float64(ref):
    generator = torch.Generator().manual_seed(2)
    keys = torch.randn(100, 5, generator=generator, dtype=torch.float64)
    queries = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    result = knn_search(queries, keys.float(), 6)
    assert result[0].dtype == torch.float64
    ref.assert_valid_knn(queries, keys.float(), 6, "euclidean", result)


def test_knn_no_queries():
    distances, index = knn_search(torch.zeros(0, 3), torch.zeros(5, 3), 2)
    assert distances.shape == index.shape == (0, 2)
    assert index.dtype == torch.int64


def test_knn_k_equals_number_of_keys(ref):
    keys = torch.tensor([[2.0], [0.0], [1.0], [0.0]])
    distances, index = knn_search(torch.tensor([[0.0]]), keys, 4)
    assert torch.equal(index, torch.tensor([[1, 3, 2, 0]]))
    assert torch.equal(distances, torch.tensor([[0.0, 0.0, 1.0, 2.0]]))


@pytest.mark.parametrize("metric", METRICS)
def test_knn_query_blocks_under_a_small_budget(ref, tile, metric):
    tile(8)
    generator = torch.Generator().manual_seed(3)
    keys = torch.randn(200, 6, generator=generator)
    queries = torch.randn(37, 6, generator=generator)
    plan = plan_chunks(37, 200, 6, 5, metric, memory_budget=2048)
    assert plan.query_block < 37
    result = knn_search(queries, keys, 5, metric, memory_budget=2048)
    ref.assert_valid_knn(queries, keys, 5, metric, result)
    for chunk_size in (1, 17, -1):
        ref.assert_identical(
            knn_search(queries, keys, 5, metric, chunk_size=chunk_size, memory_budget=2048), result
        )


@settings(max_examples=200, deadline=None)
@given(
    n_queries=st.integers(1, 100_000),
    n_keys=st.integers(1, 10_000_000),
    dim=st.integers(1, 4096),
    k=st.integers(1, 1000),
    metric=st.sampled_from(METRICS),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float64]),
)
def test_plan_fits_the_default_budget(n_queries, n_keys, dim, k, metric, dtype):
    k = min(k, n_keys)
    plan = plan_chunks(n_queries, n_keys, dim, k, metric, dtype=dtype)
    assert plan.chunk == n_keys or plan.chunk % plan.tile == 0
    assert 1 <= plan.query_block <= n_queries
    # The least these queries can take: one query and one tile per step.
    least = plan_chunks(n_queries, n_keys, dim, k, metric, 1, memory_budget=1, dtype=dtype)
    assert least.query_block == 1
    if least.scratch_bytes <= DEFAULT_MEMORY_BUDGET:
        assert plan.scratch_bytes <= DEFAULT_MEMORY_BUDGET


def test_plan_rounds_chunk_size_to_tiles():
    assert plan_chunks(4, 5000, 8, 3, chunk_size=1).chunk == 1024
    assert plan_chunks(4, 5000, 8, 3, chunk_size=1025).chunk == 2048
    assert plan_chunks(4, 5000, 8, 3, chunk_size=-1).chunk == 5000
    assert plan_chunks(4, 5000, 8, 3, chunk_size=10**9).chunk == 5000
    assert plan_chunks(4, 100, 8, 3, chunk_size=1).chunk == 100


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("metric", METRICS)
def test_knn_on_cuda(ref, metric):
    generator = torch.Generator().manual_seed(4)
    keys = torch.randn(5000, 64, generator=generator)
    queries = torch.randn(33, 64, generator=generator)
    keys[100] = queries[0]
    result = knn_search(queries.cuda(), keys.cuda(), 10, metric, chunk_size=1500)
    assert result[0].is_cuda and result[1].is_cuda
    cpu = result[0].cpu(), result[1].cpu()
    ref.assert_valid_knn(queries, keys, 10, metric, cpu)
    assert cpu[0][0, 0] == 0 and cpu[1][0, 0] == 100
    ref.assert_identical(knn_search(queries.cuda(), keys.cuda(), 10, metric, chunk_size=-1), result)
    half = knn_search(queries.cuda().half(), keys.cuda().half(), 10, metric)
    assert half[0].dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("metric", METRICS)
def test_knn_on_cuda_never_syncs_and_matches_the_cpu(ref, metric):
    generator = torch.Generator().manual_seed(7)
    keys = torch.randint(-2, 3, (3000, 16), generator=generator).float()
    queries = torch.cat((keys[:5], torch.randn(11, 16, generator=generator)))
    on_device = queries.cuda(), keys.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        result = knn_search(*on_device, 30, metric, chunk_size=1024)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    ref.assert_valid_knn(queries, keys, 30, metric, (result[0].cpu(), result[1].cpu()))
    if metric != "cosine":  # integer data: every score is exact, so the CPU agrees bit for bit
        ref.assert_identical(
            (result[0].cpu(), result[1].cpu()), knn_search(queries, keys, 30, metric)
        )


@pytest.mark.parametrize("metric", METRICS)
def test_knn_views_at_any_offset_give_the_contiguous_result(ref, tile, metric):
    tile(16)
    generator = torch.Generator().manual_seed(5)
    storage = torch.randn(1001, 37, generator=generator)
    queries = torch.randn(12, 37, generator=generator)
    view = storage[1:]
    ref.assert_identical(
        knn_search(queries, view, 9, metric), knn_search(queries, view.clone(), 9, metric)
    )
    strided = storage.T.contiguous().T[1:]
    ref.assert_identical(
        knn_search(queries, strided, 9, metric), knn_search(queries, view.clone(), 9, metric)
    )


@SETTINGS
@given(
    data=st.data(),
    metric=st.sampled_from(METRICS),
    chunk_size=CHUNKS,
    tile_size=TILES,
    budget=st.sampled_from([None, 1, 4096]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
)
def test_knn_sync_free_selection_equals_the_host_selection(
    ref, tile, selection, data, metric, chunk_size, tile_size, budget, dtype
):
    if selection == "device":
        pytest.skip("compares both selections itself")
    tile(tile_size)
    values = data.draw(st.sampled_from([ref.decimals, ref.small_ints]))
    queries, keys, k = data.draw(ref.problems(values, max_keys=60))
    queries, keys = queries.to(dtype), keys.to(dtype)

    def search(sync_free: bool) -> tuple[torch.Tensor, torch.Tensor]:
        with pytest.MonkeyPatch.context() as patch:  # undone before the next example
            patch.setattr(_plan, "sync_free", lambda device: sync_free)
            return knn_search(queries, keys, k, metric, chunk_size, memory_budget=budget)

    ref.assert_identical(search(True), search(False))


def test_keys_order_by_score_then_index_with_signed_zeros_equal():
    scores = torch.tensor([[0.0], [-0.0], [-1.5], [2.0], [-0.0], [0.0]])
    keys = _select.lowest_keys(scores.clone(), 10, 6)
    values, index = _select.decode_keys(keys.sort(dim=1).values)
    assert index.tolist() == [[12, 10, 11, 14, 15, 13]]
    assert values.tolist() == [[-1.5, 0.0, 0.0, 0.0, 0.0, 2.0]]
    assert not bool(values.signbit()[0, 1:5].any())


class _StoragePeak(TorchDispatchMode):
    """Peak bytes of the tensor storages that operations inside the block create."""

    def __init__(self, *existing: torch.Tensor) -> None:
        super().__init__()
        self.live = {t.untyped_storage().data_ptr(): 0 for t in existing}
        self.now = self.peak = 0

    def _free(self, pointer: int) -> None:
        self.now -= self.live.pop(pointer, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                pointer = storage.data_ptr()
                if pointer and pointer not in self.live:
                    self.live[pointer] = storage.nbytes()
                    self.now += storage.nbytes()
                    weakref.finalize(storage, self._free, pointer)
        self.peak = max(self.peak, self.now)
        return out


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize(
    ("n_queries", "dim", "budget"), [(301, 24, 2 * 2**20), (1029, 256, 24 * 2**20)]
)
@pytest.mark.parametrize("exact", [False, True])
def test_knn_allocates_at_most_its_budget(selection, metric, n_queries, dim, budget, exact):
    generator = torch.Generator().manual_seed(8)
    queries = torch.randn(n_queries, dim, generator=generator)
    keys = torch.randn(5000, dim, generator=generator)
    plan = plan_chunks(n_queries, 5000, dim, 20, metric, memory_budget=budget)
    assert plan.query_block < n_queries  # the last block is smaller: its buffers differ
    with _StoragePeak(queries, keys) as tracked:
        knn_search(queries, keys, 20, metric, memory_budget=budget, exact_distances=exact)
    # Beyond one step's scratch, the call holds the prepared queries and its results.
    assert 0 < tracked.peak <= budget


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_knn_off_the_cpu_never_waits_for_the_device(ref, tile, selection, metric, dtype):
    tile(8)
    generator = torch.Generator().manual_seed(6)
    keys = torch.randint(-2, 3, (50, 6), generator=generator).to(dtype)
    queries = torch.cat((keys[:3], torch.randn(4, 6, generator=generator).to(dtype)))
    if selection == "host":
        with pytest.raises(HostSyncError), forbid_host_sync():
            knn_search(queries, keys, 7, metric, chunk_size=16)
        return
    with forbid_host_sync():
        result = knn_search(queries, keys, 7, metric, chunk_size=16)
    ref.assert_valid_knn(queries, keys, 7, metric, result)
    assert bool((result[0][:3, 0] == 0).all())


def _offset_rows(generator, rows, dim, offset, scale):
    """Unit-spread rows (times ``scale``) around one common point about ``offset`` from 0."""
    return torch.randn(rows, dim, generator=generator) * scale + offset


@SETTINGS
@given(
    n_queries=st.integers(1, 8),
    n_keys=st.integers(1, 300),
    dim=st.integers(1, 64),
    k=st.integers(1, 20),
    offset=st.sampled_from([1e2, 1e3, 1e4]),
    scale=st.sampled_from([1e-2, 1.0, 10.0]),
    metric=st.sampled_from(["euclidean", "squared_euclidean"]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    chunk_size=CHUNKS,
    seed=st.integers(0, 2**31 - 1),
)
def test_knn_is_exact_for_rows_with_a_large_common_offset(
    ref, n_queries, n_keys, dim, k, offset, scale, metric, dtype, chunk_size, seed
):
    """The float32 expansion loses the rows' differences under a common offset unless it is
    taken out first: the answer must be as good as on the same rows centred at 0."""
    generator = torch.Generator().manual_seed(seed)
    common = offset * (1 + torch.rand(dim, generator=generator))
    keys = (_offset_rows(generator, n_keys, dim, 0.0, scale) + common).to(dtype)
    queries = (_offset_rows(generator, n_queries, dim, 0.0, scale) + common).to(dtype)
    k = min(k, n_keys)
    distances, index = knn_search(queries, keys, k, metric, chunk_size=chunk_size)
    reference = ref.brute_force(queries, keys, metric)
    centre = keys.double().mean(dim=0)  # the rounding error allowed on rows centred at 0
    tol = ref.tolerance(
        (queries.double() - centre).float(), (keys.double() - centre).float(), metric
    )
    close = {"rtol": 0.0, "atol": tol}
    chosen = reference.gather(1, index)
    best = reference.sort(dim=1).values[:, :k]
    torch.testing.assert_close(chosen.sort(dim=1).values, best, **close)  # right neighbours
    torch.testing.assert_close(distances.double(), chosen, **close)  # right distances


def test_knn_finds_every_neighbour_of_rows_around_1000():
    """The issue's case: 4096 x 128 unit-normal rows + 1000, k=10 (2362 of 2560 were wrong)."""
    generator = torch.Generator().manual_seed(0)
    keys = torch.randn(4096, 128, generator=generator) + 1000
    queries = torch.randn(256, 128, generator=generator) + 1000
    exact = torch.cdist(
        queries.double(), keys.double(), compute_mode="donot_use_mm_for_euclid_dist"
    )
    expected = exact.topk(10, dim=1, largest=False)
    distances, index = knn_search(queries, keys, 10)
    assert torch.equal(index, expected.indices)
    torch.testing.assert_close(distances.double(), expected.values, rtol=1e-6, atol=0)
