"""The pure functions against float64 brute force, python sets and scikit-learn."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spt_latentviz import (
    knn_recall,
    neighbour_embedding_loss,
    neighbour_graph,
    sample_negatives,
    trustworthiness,
)


def random_points(n: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def brute_neighbours(x: torch.Tensor, k: int) -> list[list[int]]:
    x = x.double()
    d = torch.cdist(x, x)
    d.fill_diagonal_(math.inf)
    return d.argsort(dim=1, stable=True)[:, :k].tolist()


def brute_trustworthiness(high: torch.Tensor, low: torch.Tensor, k: int) -> float:
    """The definition, with full float64 matrices (ties ranked by index)."""
    n = len(high)
    high_order = brute_neighbours(high, n - 1)
    low_near = brute_neighbours(low, k)
    penalty = 0
    for i in range(n):
        rank = {j: r + 1 for r, j in enumerate(high_order[i])}
        penalty += sum(max(rank[j] - k, 0) for j in low_near[i])
    return 1.0 - 2.0 * penalty / (n * k * (2 * n - 3 * k - 1))


def reference_loss(z: torch.Tensor, neighbours: torch.Tensor, negatives: torch.Tensor) -> float:
    z = z.double()
    total, pairs = 0.0, 0
    for i in range(len(z)):
        for a, j in enumerate(neighbours[i].tolist()):
            q = 1.0 / (1.0 + float((z[i] - z[j]).square().sum()))
            total -= math.log(q)
            for m in negatives[i, a].tolist():
                d2 = float((z[i] - z[m]).square().sum())
                total += math.log1p(d2) - math.log(d2 + 1e-3)
            pairs += 1
    return total / pairs


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(4, 40),
    dim=st.integers(1, 6),
    k=st.integers(1, 8),
    seed=st.integers(0, 2**16),
)
def test_neighbour_graph_matches_brute_force(n, dim, k, seed):
    x = random_points(n, dim, seed)
    k = min(k, n - 1)
    assert neighbour_graph(x, k).tolist() == brute_neighbours(x, k)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(3, 30), k=st.integers(1, 6), copies=st.integers(2, 5), seed=st.integers(0, 99))
def test_neighbour_graph_never_lists_a_point_itself_even_among_duplicates(n, k, copies, seed):
    x = random_points(n, 3, seed).repeat_interleave(copies, dim=0)
    k = min(k, len(x) - 1)
    graph = neighbour_graph(x, k)
    assert graph.shape == (len(x), k)
    rows = torch.arange(len(x)).unsqueeze(1)
    assert not (graph == rows).any()
    assert all(len(set(row)) == k for row in graph.tolist())
    distances = (x.unsqueeze(1) - x[graph]).norm(dim=-1)
    assert (distances[:, 1:] >= distances[:, :-1]).all()


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(5, 30),
    k=st.integers(1, 5),
    m=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_loss_matches_the_float64_definition(n, k, m, seed):
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=generator, dtype=torch.float64) * 3
    neighbours = torch.randint(n, (n, k), generator=generator)
    negatives = sample_negatives(n, neighbours, m, generator)
    value = neighbour_embedding_loss(z, neighbours, negatives)
    assert value.item() == pytest.approx(reference_loss(z, neighbours, negatives), rel=1e-9)


def test_loss_is_finite_with_coincident_points_and_pulls_neighbours_in():
    z = torch.tensor([[0.0, 0.0], [0.0, 0.0], [4.0, 0.0]], requires_grad=True)
    neighbours = torch.tensor([[2], [0], [1]])
    negatives = torch.tensor([[[1]], [[0]], [[2]]])  # two of them coincide with the anchor
    loss = neighbour_embedding_loss(z, neighbours, negatives)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    # Point 0 is attracted towards its neighbour 2 (at +x): a gradient step moves it right.
    assert z.grad[0, 0] < 0


def test_sample_negatives_is_reproducible_and_in_range():
    graph = torch.zeros(50, 4, dtype=torch.long)
    first = sample_negatives(7, graph, 3, torch.Generator().manual_seed(1))
    again = sample_negatives(7, graph, 3, torch.Generator().manual_seed(1))
    assert first.shape == (50, 4, 3) and first.dtype == torch.int64
    assert torch.equal(first, again)
    assert first.min() >= 0 and first.max() <= 6
    assert len(first.unique()) == 7  # 600 draws from 7 values hit all of them


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(7, 40),
    dim=st.integers(2, 6),
    k=st.integers(1, 9),
    seed=st.integers(0, 2**16),
    block=st.sampled_from([None, 1, 3, 16]),
)
def test_trustworthiness_matches_the_definition(n, dim, k, seed, block):
    high = random_points(n, dim, seed).double()
    low = high[:, :2] + 0.5 * random_points(n, 2, seed + 1).double()
    k = min(k, (n - 1) // 2)
    value = trustworthiness(high, low, k, chunk_size=block)
    assert value.item() == pytest.approx(brute_trustworthiness(high, low, k), abs=1e-12)


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(7, 60),
    k=st.integers(1, 10),
    seed=st.integers(0, 2**16),
    metric=st.sampled_from(["euclidean", "cosine", "manhattan"]),
)
def test_trustworthiness_equals_scikit_learn(n, k, seed, metric):
    manifold = pytest.importorskip("sklearn.manifold")
    high = random_points(n, 8, seed).double()
    low = high[:, :2] + random_points(n, 2, seed + 1).double()
    k = min(k, (n - 1) // 2)
    expected = manifold.trustworthiness(high.numpy(), low.numpy(), n_neighbors=k, metric=metric)
    assert trustworthiness(high, low, k, metric=metric).item() == pytest.approx(expected, abs=1e-9)


def test_trustworthiness_of_a_larger_cloud_equals_scikit_learn_in_blocks():
    manifold = pytest.importorskip("sklearn.manifold")
    high = random_points(700, 16, 3)
    low = high[:, :2] + 0.3 * random_points(700, 2, 4)
    expected = manifold.trustworthiness(high.double().numpy(), low.double().numpy(), n_neighbors=12)
    value = trustworthiness(high, low, 12, chunk_size=50)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(expected, abs=1e-5)  # fp32 distances


@settings(max_examples=25, deadline=None)
@given(n=st.integers(3, 40), k=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_knn_recall_matches_set_overlap(n, k, seed):
    high = random_points(n, 5, seed)
    low = random_points(n, 2, seed + 7)
    k = min(k, n - 1)
    true, kept = brute_neighbours(high, k), brute_neighbours(low, k)
    expected = sum(len(set(a) & set(b)) for a, b in zip(true, kept, strict=True)) / (n * k)
    assert knn_recall(high, low, k).item() == pytest.approx(expected, abs=1e-6)


def test_scores_are_perfect_for_an_isometry_and_low_for_noise():
    high = random_points(200, 2, 0)
    rotation = torch.tensor([[0.6, -0.8], [0.8, 0.6]])
    assert trustworthiness(high, high @ rotation, 10).item() == pytest.approx(1.0)
    assert knn_recall(high, high @ rotation, 10).item() == pytest.approx(1.0)
    noise = random_points(200, 2, 1)
    assert knn_recall(high, noise, 10).item() < 0.2
    assert trustworthiness(high, noise, 10).item() < 0.7


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda x: trustworthiness(x, x, 5), "k < N / 2"),
        (lambda x: trustworthiness(x, x[:5], 2), "same rows"),
        (lambda x: knn_recall(x, x, 10), "at most N - 1"),
        (lambda x: neighbour_graph(x, 0), "k must be an integer >= 1, got 0"),
        (lambda x: neighbour_graph(x[0], 1), r"shape \(N, D\)"),
        (lambda x: sample_negatives(10, x.long(), 0), "n_negatives"),
        (
            lambda x: neighbour_embedding_loss(
                x[:, :2], torch.zeros(10, 2).long(), torch.zeros(10, 3, 1).long()
            ),
            "negatives must have shape",
        ),
    ],
)
def test_bad_arguments_raise_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(random_points(10, 3, 0))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda x: neighbour_graph(x, 2.0), "k must be an integer >= 1, got 2.0"),
        (lambda x: trustworthiness(x, x, "2"), "k must be an integer"),
        (lambda x: knn_recall(x.tolist(), x, 2), "high must be a torch.Tensor"),
        (lambda x: sample_negatives(10, x.long(), 2.0), "n_negatives must be an integer"),
        (lambda x: sample_negatives(10.0, x.long(), 2), "num_points must be an integer"),
        (lambda x: neighbour_embedding_loss(x.tolist(), x, x), "z must be a torch.Tensor"),
    ],
)
def test_arguments_of_the_wrong_type_raise_type_errors(call, match):
    with pytest.raises(TypeError, match=match):
        call(random_points(10, 3, 0))


@pytest.mark.parametrize("chunk_size", [-1, 1, 7, None])
def test_trustworthiness_is_the_same_for_every_block_size(chunk_size):
    high, low = random_points(60, 5, 0), random_points(60, 2, 1)
    expected = trustworthiness(high, low, 5)
    assert expected < 0.9  # a map that loses neighbours: any skipped block would show
    assert torch.equal(trustworthiness(high, low, 5, chunk_size=chunk_size), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_the_cpu_results():
    high = random_points(300, 16, 0)
    low = high[:, :2] + 0.3 * random_points(300, 2, 1)
    cuda = torch.device("cuda")
    graph = neighbour_graph(high, 10)
    assert torch.equal(neighbour_graph(high.to(cuda), 10).cpu(), graph)
    negatives = sample_negatives(300, graph.to(cuda), 5, torch.Generator().manual_seed(0))
    assert negatives.device.type == "cuda"
    on_gpu = neighbour_embedding_loss(low.to(cuda), graph.to(cuda), negatives)
    on_cpu = neighbour_embedding_loss(low, graph, negatives.cpu())
    assert on_gpu.item() == pytest.approx(on_cpu.item(), rel=1e-5)
    for score in (trustworthiness, knn_recall):
        assert score(high.to(cuda), low.to(cuda), 10).item() == pytest.approx(
            score(high, low, 10).item(), abs=1e-6
        )
