import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spt_distance import METRICS, pairwise_distances

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(data=st.data(), metric=st.sampled_from(METRICS))
def test_pairwise_matches_float64_brute_force(ref, data, metric):
    x, y, _ = data.draw(ref.problems())
    dtype = data.draw(st.sampled_from(ref.dtypes))
    x, y = x.to(dtype), y.to(dtype)
    distances = pairwise_distances(x, y, metric)
    assert distances.shape == (x.shape[0], y.shape[0])
    assert distances.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert bool((distances >= 0).all())
    torch.testing.assert_close(
        distances.double(),
        ref.brute_force(x, y, metric),
        rtol=0,
        atol=ref.tolerance(x, y, metric),
    )


@SETTINGS
@given(
    rows=st.integers(1, 30),
    dim=st.integers(1, 300),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
    offset=st.sampled_from([0.0, 100.0]),
    seed=st.integers(0, 2**31 - 1),
    metric=st.sampled_from(METRICS),
)
def test_pairwise_identical_rows_are_exactly_zero(rows, dim, scale, offset, seed, metric):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, dim, generator=generator) * scale + offset
    y = torch.cat((torch.randn(3, dim, generator=generator) * scale + offset, x))
    distances = pairwise_distances(x, y, metric)
    assert bool((distances[:, 3:].diagonal() == 0).all())
    assert bool((distances >= 0).all())


def test_pairwise_cosine_zero_vectors_have_distance_one():
    x = torch.tensor([[0.0, 0.0], [1.0, 2.0], [-2.0, 1.0]])
    distances = pairwise_distances(x, x, metric="cosine")
    assert not bool(distances.isnan().any())
    expected = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    torch.testing.assert_close(distances, expected, rtol=0, atol=1e-7)
    assert distances[0, 0] == 1 and distances[1, 1] == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("metric", METRICS)
def test_pairwise_low_precision_equals_float32_on_upcast_values(dtype, metric):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(40, 24, generator=generator).to(dtype)
    y = torch.randn(30, 24, generator=generator).to(dtype)
    low = pairwise_distances(x, y, metric)
    assert low.dtype == torch.float32
    assert torch.equal(low, pairwise_distances(x.float(), y.float(), metric))


def test_pairwise_mixed_float64_computes_in_float64():
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([[1.0, 2.0 + 1e-12]])
    assert pairwise_distances(x, y).dtype == torch.float64


def test_pairwise_empty_inputs():
    assert pairwise_distances(torch.zeros(0, 3), torch.zeros(4, 3)).shape == (0, 4)
    assert pairwise_distances(torch.zeros(2, 3), torch.zeros(0, 3), "cosine").shape == (2, 0)


@SETTINGS
@given(
    rows=st.integers(1, 30),
    dim=st.integers(1, 64),
    offset=st.sampled_from([1e2, 1e3, 1e4]),
    scale=st.sampled_from([1e-2, 1.0, 10.0]),
    metric=st.sampled_from(["euclidean", "squared_euclidean"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_pairwise_is_as_precise_under_a_large_common_offset(
    ref, rows, dim, offset, scale, metric, seed
):
    generator = torch.Generator().manual_seed(seed)
    common = offset * (1 + torch.rand(dim, generator=generator))
    x = torch.randn(rows, dim, generator=generator) * scale + common
    y = torch.randn(rows + 3, dim, generator=generator) * scale + common
    centre = x.double().mean(dim=0)
    torch.testing.assert_close(
        pairwise_distances(x, y, metric).double(),
        ref.brute_force(x, y, metric),
        rtol=0,
        atol=ref.tolerance((x.double() - centre).float(), (y.double() - centre).float(), metric),
    )
