"""A float64 brute force and the checks that compare `spt_distance` with it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from hypothesis import strategies as st

from spt_distance import _plan

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def brute_force(x: torch.Tensor, y: torch.Tensor, metric: str) -> torch.Tensor:
    """Every distance by its definition, in float64 (zero vectors: cosine similarity 0)."""
    a, b = x.double(), y.double()
    diff = a.unsqueeze(1) - b.unsqueeze(0)
    if metric == "euclidean":
        return diff.square().sum(-1).sqrt()
    if metric == "squared_euclidean":
        return diff.square().sum(-1)
    if metric == "manhattan":
        return diff.abs().sum(-1)
    na, nb = a.norm(dim=1), b.norm(dim=1)
    denominator = na.unsqueeze(1) * nb.unsqueeze(0)
    similarity = torch.where(denominator > 0, (a @ b.T) / denominator, torch.zeros(()).double())
    return 1 - similarity


def _largest(values: torch.Tensor) -> float:
    return float(values.max()) if values.numel() else 0.0


def tolerance(x: torch.Tensor, y: torch.Tensor, metric: str) -> float:
    """Rounding error allowed for a float32 (or float64) computation of these inputs."""
    eps = torch.finfo(torch.float64 if torch.float64 in (x.dtype, y.dtype) else torch.float32).eps
    bound = 8 * (x.shape[1] + 4) * eps
    if metric == "cosine":
        return bound
    if metric == "manhattan":
        return bound * (_largest(x.double().abs().sum(1)) + _largest(y.double().abs().sum(1)))
    scale = _largest(x.double().norm(dim=1)) + _largest(y.double().norm(dim=1))
    if metric == "squared_euclidean":
        return bound * scale**2
    return bound**0.5 * scale


def reference_knn(
    queries: torch.Tensor, keys: torch.Tensor, k: int, metric: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest by (float64 distance, index)."""
    distances, order = brute_force(queries, keys, metric).sort(dim=1, stable=True)
    return distances[:, :k], order[:, :k]


def assert_valid_knn(
    queries: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    metric: str,
    result: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """``result`` is a k-nearest-neighbour answer, up to rounding error near ties."""
    distances, index = result
    n_queries = queries.shape[0]
    assert distances.shape == index.shape == (n_queries, k)
    assert index.dtype == torch.int64
    expected_dtype = (
        torch.float64 if torch.float64 in (queries.dtype, keys.dtype) else torch.float32
    )
    assert distances.dtype == expected_dtype
    if n_queries == 0:
        return
    assert bool((index >= 0).all()) and bool((index < keys.shape[0]).all())
    for row in index:
        assert len(set(row.tolist())) == k, "a key is returned twice"
    assert bool((distances[:, 1:] >= distances[:, :-1]).all()), "not sorted nearest first"
    reference = brute_force(queries, keys, metric)
    tol = tolerance(queries, keys, metric)
    close = {"rtol": 0.0, "atol": tol, "check_dtype": False}
    torch.testing.assert_close(distances.double(), reference.gather(1, index), **close)
    best, _ = reference_knn(queries, keys, k, metric)
    torch.testing.assert_close(distances.double(), best, **close)
    equal = distances[:, 1:] == distances[:, :-1]
    assert bool((index[:, 1:] > index[:, :-1])[equal].all()), "equal distances not by index"


def assert_identical(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]):
    assert torch.equal(a[0], b[0]), (a[0], b[0])
    assert torch.equal(a[1], b[1]), (a[1], b[1])


@pytest.fixture
def tile(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """Set the keys-per-product tile, so that small tests see many tiles and chunks."""

    def set_tile(size: int) -> None:
        monkeypatch.setattr(_plan, "TILE", size)

    return set_tile


def matrices(
    draw: st.DrawFn, rows: int, dim: int, values: st.SearchStrategy[float]
) -> torch.Tensor:
    flat = draw(st.lists(values, min_size=rows * dim, max_size=rows * dim))
    return torch.tensor(flat, dtype=torch.float64).reshape(rows, dim)


# Two-decimal values in [-10, 10]: mostly inexact in binary, zero included.
DECIMALS = st.integers(-1000, 1000).map(lambda v: v / 100)
# Small integers: every distance and score is exact in float32, so ties are exact.
SMALL_INTS = st.integers(-3, 3).map(float)


@st.composite
def problems(draw: st.DrawFn, values: st.SearchStrategy[float] = DECIMALS, max_keys: int = 40):
    """(queries, keys, k) with duplicate keys and queries copied into the keys."""
    dim = draw(st.integers(1, 6))
    n_queries = draw(st.integers(1, 6))
    n_keys = draw(st.integers(1, max_keys))
    queries = matrices(draw, n_queries, dim, values)
    keys = matrices(draw, n_keys, dim, values)
    for _ in range(draw(st.integers(0, 3))):
        source = draw(st.integers(0, n_keys - 1))
        keys[draw(st.integers(0, n_keys - 1))] = keys[source]
    if draw(st.booleans()):
        keys[draw(st.integers(0, n_keys - 1))] = queries[0]
    k = draw(st.integers(1, n_keys))
    return queries, keys, k


@dataclass(frozen=True)
class Helpers:
    """What the test modules share (they cannot import each other)."""

    brute_force: Callable[..., torch.Tensor]
    tolerance: Callable[..., float]
    reference_knn: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    assert_valid_knn: Callable[..., None]
    assert_identical: Callable[..., None]
    problems: Callable[..., st.SearchStrategy]
    decimals: st.SearchStrategy[float]
    small_ints: st.SearchStrategy[float]
    dtypes: tuple[torch.dtype, ...]


@pytest.fixture(scope="session")
def ref() -> Helpers:
    return Helpers(
        brute_force,
        tolerance,
        reference_knn,
        assert_valid_knn,
        assert_identical,
        problems,
        DECIMALS,
        SMALL_INTS,
        DTYPES,
    )
