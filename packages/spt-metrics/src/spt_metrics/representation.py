"""Label-free measures of representation quality and collapse, as pure functions.

Each function takes embeddings as rows (a tensor or an array of any real dtype, on any device)
and returns a 0-dim float64 tensor. The value is computed in float64 from sums that can also be
accumulated batch by batch: the Metrics of :mod:`spt_metrics.representation_metrics` keep the
same sums and finish with the same code (:mod:`spt_metrics._representation_stats`), so that a
Metric over several batches equals its function over their concatenation. Rows are
l2-normalised where the paper says so (a zero row stays zero). Too few rows give ``nan`` (each
function says how many it needs) rather than an error, so that a short or empty epoch never
stops a run; a wrong shape or an argument out of range raises ``ValueError`` (``TypeError`` for
an argument of the wrong type, or embeddings that are not real numbers).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from spt_metrics._representation_stats import (
    NAN,
    alignment_stats,
    check_energy,
    check_positive,
    dims_for_energy_from_stats,
    effective_rank_from_stats,
    embedding_std_from_stats,
    gram_stats,
    lidar_from_stats,
    lidar_stats,
    mean_cosine_from_stats,
    moment_stats,
    normalise,
    rankme_from_stats,
    rows,
    same_shape,
    uniformity_from_rows,
    views_tensor,
)

__all__ = [
    "alignment",
    "dims_for_energy",
    "effective_rank",
    "embedding_std",
    "lidar",
    "mean_cosine_similarity",
    "rankme",
    "uniformity",
]


def rankme(z: Any, eps: float = 1e-7) -> Tensor:
    """RankMe (Garrido et al., 2023): ``exp(-sum_k p_k log p_k)``, ``p_k = s_k / |s|_1 + eps``.

    ``s`` are the singular values of the (uncentred) embedding matrix, taken as the square roots
    of the eigenvalues of ``Z^T Z`` (exact, and what a stream of batches can sum).

    Args:
        z: Embeddings ``(N, D)``.
        eps: The paper's ``epsilon``.

    Returns:
        A value in ``[1, min(N, D)]`` up to ``eps``: about ``D`` for a well spread embedding,
        1 when every row is on one line; ``nan`` without rows; about 1 for a zero matrix.

    Raises:
        TypeError: If ``z`` does not hold real numbers or ``eps`` is not a number.
        ValueError: If ``z`` is not 2-D or ``eps < 0``.

    Example:
        >>> import torch
        >>> rankme(torch.eye(4))
        tensor(4.0000, dtype=torch.float64)
    """
    eps = check_positive(eps, "eps", "rankme", zero=True)
    return rankme_from_stats(*gram_stats(rows(z, "rankme"))[::2], eps)


def effective_rank(z: Any) -> Tensor:
    """Effective rank (Roy & Vetterli, 2007) of the embeddings' covariance matrix.

    ``exp(-sum_k p_k log p_k)`` with ``p_k = l_k / sum(l)``, ``l`` the eigenvalues of the
    unbiased covariance of ``z`` (rows centred). It is the same entropy as :func:`rankme`, but
    over the variances of the centred embedding (``l_k`` are squared singular values of the
    centred matrix), with no ``eps``: the mean direction does not count, and squaring weighs
    the leading directions more (on one spectrum, the entropy of ``s^2`` is at most that of
    ``s``).

    Args:
        z: Embeddings ``(N, D)``; ``N >= 2`` (else ``nan``).

    Returns:
        A value in ``[1, min(N - 1, D)]``; 1 when the rows vary along one line or not at all.

    Raises:
        TypeError: If ``z`` does not hold real numbers.
        ValueError: If ``z`` is not 2-D.

    Example:
        >>> import torch
        >>> effective_rank(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]))
        tensor(2.0000, dtype=torch.float64)
    """
    return effective_rank_from_stats(*gram_stats(rows(z, "effective_rank")))


def dims_for_energy(z: Any, energy: float = 0.99) -> Tensor:
    """Fraction of the ``D`` singular directions needed to carry ``energy`` of ``sum s_k^2``.

    The smallest ``k`` such that the ``k`` largest squared singular values of ``z`` reach
    ``energy`` of their sum, divided by ``D``.

    Args:
        z: Embeddings ``(N, D)``.
        energy: The share of the energy to carry, in ``(0, 1]``.

    Returns:
        A value in ``[1/D, 1]``: ``1/D`` for a rank-1 embedding; 0 for a zero matrix; ``nan``
        without rows.

    Raises:
        TypeError: If ``z`` does not hold real numbers or ``energy`` is not a number.
        ValueError: If ``z`` is not 2-D or ``energy`` is outside ``(0, 1]``.

    Example:
        >>> import torch
        >>> z = torch.diag(torch.tensor([3.0, 1.0, 0.1, 0.0]))  # energies 9, 1, 0.01, 0
        >>> dims_for_energy(z, energy=0.8), dims_for_energy(z, energy=0.99)
        (tensor(0.2500, dtype=torch.float64), tensor(0.5000, dtype=torch.float64))
    """
    energy = check_energy(energy, "dims_for_energy")
    gram, _, count = gram_stats(rows(z, "dims_for_energy"))
    return dims_for_energy_from_stats(gram, count, energy)


def embedding_std(z: Any) -> Tensor:
    """Collapse indicator: the std (unbiased) of each dimension of the l2-normalised rows, averaged.

    The indicator of Chen & He (2021, SimSiam, section 4.1).

    Args:
        z: Embeddings ``(N, D)``; ``N >= 2`` (else ``nan``).

    Returns:
        About ``1/sqrt(D)`` when the directions spread over the sphere, 0 when collapsed.

    Raises:
        TypeError: If ``z`` does not hold real numbers.
        ValueError: If ``z`` is not 2-D.

    Example:
        >>> import torch
        >>> embedding_std(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        tensor(0.7071, dtype=torch.float64)
    """
    return embedding_std_from_stats(*moment_stats(rows(z, "embedding_std")))


def mean_cosine_similarity(z: Any) -> Tensor:
    """Mean cosine similarity over the pairs of distinct rows, ``(|sum u|^2 - sum |u|^2)/(N(N-1))``.

    ``u`` are the l2-normalised rows (a zero row has cosine 0 with every row).

    Args:
        z: Embeddings ``(N, D)``; ``N >= 2`` (else ``nan``).

    Returns:
        A value in ``[-1, 1]``: near 0 for spread directions, 1 when every row points the same way.

    Raises:
        TypeError: If ``z`` does not hold real numbers.
        ValueError: If ``z`` is not 2-D.

    Example:
        >>> import torch
        >>> mean_cosine_similarity(torch.tensor([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0]]))
        tensor(0.8047, dtype=torch.float64)
    """
    return mean_cosine_from_stats(*moment_stats(rows(z, "mean_cosine_similarity")))


def alignment(z1: Any, z2: Any, alpha: float = 2.0) -> Tensor:
    """Alignment (Wang & Isola, 2020): ``mean_i |u1_i - u2_i|^alpha`` over positive pairs.

    Args:
        z1: Embeddings of one view ``(N, D)``.
        z2: Embeddings of the other view of the same samples, same shape.
        alpha: The exponent (the paper's default 2).

    Returns:
        A value in ``[0, 2^alpha]``, lower is better (0 when the two views agree); ``nan``
        without rows.

    Raises:
        TypeError: If a view does not hold real numbers or ``alpha`` is not a number.
        ValueError: If the views are not 2-D or differ in shape, or ``alpha <= 0``.

    Example:
        >>> import torch
        >>> z1, z2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[2.0, 0.0], [1.0, 0.0]])
        >>> alignment(z1, z2)
        tensor(1.0000, dtype=torch.float64)
    """
    alpha = check_positive(alpha, "alpha", "alignment")
    a, b = same_shape(rows(z1, "alignment", "z1"), rows(z2, "alignment", "z2"), "alignment")
    total, count = alignment_stats(a, b, alpha)
    return total / count if count else total.new_tensor(NAN)


def uniformity(z1: Any, z2: Any = None, t: float = 2.0) -> Tensor:
    """Uniformity (Wang & Isola, 2020): ``log mean_{i != j} exp(-t |u_i - u_j|^2)``.

    Over every pair of distinct l2-normalised rows of ``z1``; with a second view ``z2``, the
    average of the two views' values (as in the paper's loss).

    Args:
        z1: Embeddings ``(N, D)``; ``N >= 2`` (else ``nan``).
        z2: Optional second view, same shape.
        t: The paper's ``t`` (default 2).

    Returns:
        A value in ``[-4t, 0]``, lower is better: ``-4t`` for two antipodal rows, about
        ``-2t`` for many rows spread over a high-dimensional sphere, 0 when all rows coincide.

    Raises:
        TypeError: If a view does not hold real numbers or ``t`` is not a number.
        ValueError: If a view is not 2-D, the views differ in shape, or ``t <= 0``.

    Example:
        >>> import torch
        >>> uniformity(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        tensor(-8.0000, dtype=torch.float64)
    """
    t = check_positive(t, "t", "uniformity")
    views = [rows(z1, "uniformity", "z1")]
    if z2 is not None:
        views = same_shape(views[0], rows(z2, "uniformity", "z2"), "uniformity")
    values = [uniformity_from_rows(normalise(v), v.new_ones(len(v)), t) for v in views]
    return sum(values) / len(values)


def lidar(views: Any, *more_views: Any, delta: float = 1e-4, eps: float = 1e-8) -> Tensor:
    """LiDAR (Thilak et al., 2023): the effective rank of the LDA matrix of views per sample.

    Each sample is a class and its ``q`` views (augmentations) are its members. With the
    sample means ``m_i``, their mean ``m``, ``Sigma_b = sum_i (m_i - m)(m_i - m)^T / (n - 1)``,
    ``Sigma_w = sum_{i,j} (e_ij - m_i)(e_ij - m_i)^T / (n (q - 1)) + delta I`` and
    ``Sigma = Sigma_w^{-1/2} Sigma_b Sigma_w^{-1/2}`` with eigenvalues ``l``:
    ``LiDAR = exp(-sum_k p_k log p_k)``, ``p_k = l_k / |l|_1 + eps``.

    Args:
        views: ``(n, q, D)`` (sample, view, feature), or the first view ``(n, D)`` when the
            other views follow as ``more_views`` (row ``i`` of every view is sample ``i``).
        *more_views: Further views ``(n, D)``.
        delta: The within-class regularisation ``delta`` (1e-4 by default).
        eps: The ``eps`` added to each ``p_k`` (1e-8 by default).

    Returns:
        A value in ``[1, min(n - 1, D)]`` up to ``eps``: high when samples are linearly
        separable in many directions, about 1 when collapsed (or zero scatter); ``nan`` with
        fewer than 2 samples.

    Raises:
        TypeError: If the views do not hold real numbers or ``delta``/``eps`` is not a number.
        ValueError: For another shape, fewer than 2 views, or ``delta <= 0`` or ``eps < 0``.

    Example:
        >>> import torch
        >>> first = torch.tensor([[4.0, 0.0], [-4.0, 0.0], [0.0, 4.0], [0.0, -4.0]])
        >>> lidar(first, 1.1 * first)
        tensor(2.0000, dtype=torch.float64)
    """
    delta = check_positive(delta, "delta", "lidar")
    eps = check_positive(eps, "eps", "lidar", zero=True)
    stats = lidar_stats(views_tensor(views, more_views, "lidar"))
    return lidar_from_stats(*stats, delta, eps)
