"""The label-free representation functions against float64 numpy versions of the papers'
formulas, on collapsed embeddings, and on bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from spt_metrics.functional import (
    alignment,
    dims_for_energy,
    effective_rank,
    embedding_std,
    lidar,
    mean_cosine_similarity,
    rankme,
    uniformity,
)

CHECKS = settings(max_examples=40, deadline=None)

# ----------------------------------------------------------- float64 numpy references


def unit(z):
    return z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)


def exp_entropy(p):
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def ref_rankme(z, eps=1e-7):
    """Garrido et al. 2023: p_k = sigma_k / ||sigma||_1 + eps over the min(N, D) sigma_k."""
    s = np.linalg.svd(z, compute_uv=False)
    return exp_entropy(s / s.sum() + eps if s.sum() > 0 else s + eps)


def ref_effective_rank(z):
    """Roy & Vetterli 2007 of the unbiased covariance: its singular values are its eigenvalues."""
    eigenvalues = np.clip(np.linalg.eigvalsh(np.atleast_2d(np.cov(z, rowvar=False))), 0, None)
    if eigenvalues.max() <= 1e-12 * max(1.0, float((z**2).mean())):
        return 1.0  # no variance at all: a single point
    return exp_entropy(eigenvalues / eigenvalues.sum())


def energy_curve(z):
    """Cumulative share of sum sigma^2 carried by the k largest, k = 1..D."""
    energies = np.zeros(z.shape[1])
    s = np.linalg.svd(z, compute_uv=False)
    energies[: len(s)] = s**2
    return np.cumsum(energies) / energies.sum()


def ref_embedding_std(z):
    return float(unit(z).std(axis=0, ddof=1).mean())


def ref_mean_cosine(z):
    cosines = unit(z) @ unit(z).T
    n = len(z)
    return float((cosines.sum() - np.trace(cosines)) / (n * (n - 1)))


def ref_alignment(a, b, alpha=2.0):
    """Wang & Isola 2020, ``align_loss``: E ||f(x) - f(y)||_2^alpha over positive pairs."""
    return float((np.linalg.norm(unit(a) - unit(b), axis=1) ** alpha).mean())


def ref_uniformity(z, t=2.0):
    """Wang & Isola 2020, ``uniform_loss``: log E exp(-t ||f(x) - f(y)||^2) over i < j."""
    u = unit(z)
    i, j = np.triu_indices(len(u), k=1)
    squared = ((u[i] - u[j]) ** 2).sum(1)
    return float(np.log(np.exp(-t * squared).mean()))


def ref_lidar(views, delta=1e-4, eps=1e-8):
    """Thilak et al. 2023: LDA matrix of n surrogate classes (samples) with q views each."""
    n, q, d = views.shape
    means = views.mean(axis=1)
    grand = means.mean(axis=0)
    between = sum(np.outer(m - grand, m - grand) for m in means) / (n - 1)
    within = sum(np.outer(e - means[i], e - means[i]) for i in range(n) for e in views[i])
    within = within / (n * (q - 1)) + delta * np.eye(d)
    scale, basis = np.linalg.eigh(within)
    whiten = basis @ np.diag(scale**-0.5) @ basis.T
    eigenvalues = np.clip(np.linalg.eigvalsh(whiten @ between @ whiten), 0, None)
    # numerical rank: what float64 rounding of the between scatter can produce counts as 0
    floor = 1e-9 * (eigenvalues.max() + (means**2).sum() / (n - 1) / scale.min())
    eigenvalues[eigenvalues <= floor] = 0
    total = eigenvalues.sum()
    return exp_entropy((eigenvalues / total if total > 0 else eigenvalues) + eps)


# ------------------------------------------------------------------------- strategies

half_integers = st.integers(-4, 4).map(lambda v: v / 2)


@st.composite
def matrices(draw, min_rows=1, max_rows=12, max_dim=6):
    """Gaussian rows (anisotropic, off-centre), or a grid of half-integers: repeated rows,
    zero rows and rank deficiency, with sums float64 computes exactly."""
    n = draw(st.integers(min_rows, max_rows))
    d = draw(st.integers(1, max_dim))
    if draw(st.booleans()):
        return draw(arrays(np.float64, (n, d), elements=half_integers))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return rng.normal(size=(n, d)) * rng.uniform(0.1, 3.0, size=d) + rng.normal(size=d)


@st.composite
def view_sets(draw):
    n, q, d = draw(st.integers(2, 8)), draw(st.integers(2, 4)), draw(st.integers(1, 5))
    if draw(st.booleans()):
        return draw(arrays(np.float64, (n, q, d), elements=half_integers))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    centres = rng.normal(size=(n, 1, d)) * 2
    return centres + rng.uniform(0.01, 1.0) * rng.normal(size=(n, q, d))


def close(value, expected, rel=1e-6, abs=1e-9):
    assert isinstance(value, torch.Tensor) and value.dtype == torch.float64 and value.ndim == 0
    assert float(value) == pytest.approx(expected, rel=rel, abs=abs)


# --------------------------------------------------------------------- reference tests


@CHECKS
@given(matrices(), st.sampled_from([1e-7, 0.0, 1e-3]))
def test_rankme_equals_the_papers_formula_on_the_singular_values(z, eps):
    close(rankme(torch.from_numpy(z), eps=eps), ref_rankme(z, eps))


@CHECKS
@given(matrices(min_rows=2))
def test_effective_rank_equals_roy_vetterli_of_the_covariance(z):
    close(effective_rank(torch.from_numpy(z)), ref_effective_rank(z))


@CHECKS
@given(matrices(), st.floats(0.05, 1.0))
def test_dims_for_energy_is_the_smallest_share_of_dims_reaching_the_energy(z, energy):
    curve = energy_curve(z)
    k = round(float(dims_for_energy(torch.from_numpy(z), energy=energy)) * z.shape[1])
    if not np.isfinite(curve).all():  # a zero matrix carries no energy
        assert k == 0
        return
    assert curve[k - 1] >= energy - 1e-9
    assert k == 1 or curve[k - 2] < energy + 1e-9


@CHECKS
@given(matrices(min_rows=2))
def test_collapse_indicators_equal_their_definitions(z):
    close(embedding_std(torch.from_numpy(z)), ref_embedding_std(z))
    close(mean_cosine_similarity(torch.from_numpy(z)), ref_mean_cosine(z))


@CHECKS
@given(matrices(min_rows=2), st.data())
def test_alignment_and_uniformity_equal_wang_and_isola(z1, data):
    z2 = z1 + data.draw(arrays(np.float64, z1.shape, elements=half_integers))
    alpha = data.draw(st.sampled_from([2.0, 1.0, 0.5]))
    t = data.draw(st.sampled_from([2.0, 0.5]))
    z1t, z2t = torch.from_numpy(z1), torch.from_numpy(z2)
    close(alignment(z1t, z2t, alpha=alpha), ref_alignment(z1, z2, alpha))
    close(uniformity(z1t, t=t), ref_uniformity(z1, t))
    both = (ref_uniformity(z1, t) + ref_uniformity(z2, t)) / 2
    close(uniformity(z1t, z2t, t=t), both)


@CHECKS
@given(view_sets())
def test_lidar_equals_the_lda_rank_of_the_views(views):
    expected = ref_lidar(views)
    close(lidar(torch.from_numpy(views)), expected, rel=1e-5)
    split = [torch.from_numpy(views[:, j]) for j in range(views.shape[1])]
    close(lidar(*split), expected, rel=1e-5)


def test_inputs_of_any_float_dtype_and_numpy_arrays_give_float64():
    z = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    expected = float(rankme(z))
    for variant in (z.half(), z.bfloat16(), z.numpy()):
        value = rankme(variant)
        assert value.dtype == torch.float64
        assert float(value) == pytest.approx(expected, rel=1e-2)


# ------------------------------------------------------------------------- collapse

D = 16


def healthy(n=512, seed=0):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def all_equal(n=512):
    return healthy(1).repeat(n, 1)


def rank_one(n=512):
    """Positive multiples of one direction: one line through the origin."""
    scales = torch.rand(n, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return (scales + 0.5) * healthy(1)


@pytest.mark.parametrize("collapsed", [all_equal, rank_one], ids=["all_equal", "rank_one"])
def test_every_indicator_moves_the_way_its_paper_says_on_a_collapsed_embedding(collapsed):
    good, bad = healthy(), collapsed()
    assert float(rankme(good)) > 0.9 * D and float(rankme(bad)) == pytest.approx(1.0, abs=1e-4)
    assert float(effective_rank(good)) > 0.9 * D
    assert float(effective_rank(bad)) == pytest.approx(1.0, abs=1e-9)
    assert float(dims_for_energy(good)) > 0.9 and float(dims_for_energy(bad)) == 1 / D
    assert float(embedding_std(good)) == pytest.approx(1 / math.sqrt(D), rel=0.05)
    assert float(embedding_std(bad)) < 1e-6
    assert abs(float(mean_cosine_similarity(good))) < 0.02
    assert float(mean_cosine_similarity(bad)) == pytest.approx(1.0, abs=1e-9)
    assert float(uniformity(good)) < -3.0 and float(uniformity(bad)) == pytest.approx(0, abs=1e-9)
    noise = 0.05 * healthy(seed=2)
    assert float(alignment(good, good + noise)) < 0.01
    good_views = torch.stack([good + noise, good - noise], dim=1)
    bad_views = torch.stack([bad, bad * 1.01], dim=1)
    assert float(lidar(good_views)) > 0.9 * D
    assert float(lidar(bad_views)) == pytest.approx(1.0, abs=1e-4)


# ---------------------------------------------------------------- too few rows, errors


def test_too_few_rows_give_nan_not_an_error():
    none, one = torch.zeros(0, 3), torch.ones(1, 3)
    for value in (rankme(none), dims_for_energy(none), alignment(none, none)):
        assert math.isnan(value)
    for function in (effective_rank, embedding_std, mean_cosine_similarity, uniformity):
        assert math.isnan(function(one)), function.__name__
    assert math.isnan(lidar(torch.ones(1, 2, 3)))
    assert float(rankme(one)) == pytest.approx(1.0, abs=1e-5)


def test_a_zero_matrix_counts_as_collapsed():
    zeros = torch.zeros(5, 3)
    assert float(rankme(zeros)) == pytest.approx(1.0, abs=1e-4)
    assert float(effective_rank(zeros)) == 1.0
    assert float(dims_for_energy(zeros)) == 0.0
    assert float(lidar(torch.zeros(5, 2, 3))) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: rankme(torch.zeros(4)), r"rankme: z must be a real 2-D \(rows, features\)"),
        (lambda: effective_rank(torch.zeros(2, 3, 4)), "effective_rank: z must be a real 2-D"),
        (lambda: embedding_std(torch.zeros(3, 0)), "embedding_std: z has 0 features"),
        (lambda: rankme(torch.eye(2), eps=-1.0), "rankme: eps must be a finite number >= 0"),
        (lambda: dims_for_energy(torch.eye(2), energy=1.5), r"energy must be in \(0, 1\]"),
        (lambda: dims_for_energy(torch.eye(2), energy=0), "energy must be a finite number > 0"),
        (lambda: alignment(torch.eye(2), torch.eye(3)), "alignment: z1 and z2 must have the same"),
        (lambda: alignment(torch.eye(2), torch.eye(2), alpha=0), "alignment: alpha must be"),
        (lambda: uniformity(torch.eye(2), t=float("nan")), "uniformity: t must be a finite"),
        (lambda: uniformity(torch.eye(2), torch.eye(3)), "uniformity: z1 and z2 must have"),
        (lambda: lidar(torch.zeros(4, 1, 3)), "lidar: needs at least 2 views per sample, got 1"),
        (lambda: lidar(torch.zeros(4, 3)), r"lidar: views must be one real \(samples, views"),
        (lambda: lidar(torch.zeros(4, 3), torch.zeros(5, 3)), "lidar: every view must have"),
        (lambda: lidar(torch.zeros(4, 2, 3), delta=0.0), "lidar: delta must be"),
    ],
)
def test_bad_input_is_a_value_error_that_names_the_function_and_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: rankme(torch.eye(2, dtype=torch.bool)), "rankme: z must hold real numbers"),
        (lambda: effective_rank(torch.eye(2) * 1j), "effective_rank: z must hold real numbers"),
        (lambda: embedding_std("rows"), "embedding_std: z must be a tensor of real numbers"),
        (lambda: alignment(torch.eye(2), object()), "alignment: z2 must be a tensor of real"),
        (lambda: lidar([[None]]), "lidar: views must be a tensor of real numbers"),
        (lambda: rankme(torch.eye(2), eps="small"), "rankme: eps must be a finite number"),
    ],
)
def test_input_of_the_wrong_type_is_a_type_error_that_names_the_function_and_the_argument(
    call, message
):
    with pytest.raises(TypeError, match=message):
        call()
