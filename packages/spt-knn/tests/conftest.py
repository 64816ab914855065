"""Shared pieces of the spt-knn tests: a float64 reference kNN, blob data, and the tiny
Lightning setup of `spt_core.testing` (the backbone's embedding is its input)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassAccuracy

from spt_core.testing import Backbone, DictDataset, captured_logs, quiet_trainer
from spt_knn import OnlineKNN


def reference_distances(queries: torch.Tensor, bank: torch.Tensor, metric: str) -> torch.Tensor:
    """Every query-to-row distance in float64, straight from the definitions."""
    q, b = queries.double()[:, None, :], bank.double()[None, :, :]
    if metric == "euclidean":
        return (q - b).pow(2).sum(-1).sqrt()
    if metric == "squared_euclidean":
        return (q - b).pow(2).sum(-1)
    if metric == "manhattan":
        return (q - b).abs().sum(-1)
    if metric == "cosine":
        return 1 - (q * b).sum(-1) / (q.norm(dim=-1) * b.norm(dim=-1))
    raise AssertionError(metric)


def reference_scores(
    queries, bank, labels, num_classes, k, temperature, metric, weighting
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores computed row by row in float64 with Python loops, and a mask of the rows whose
    k-th and (k+1)-th nearest distances are apart (elsewhere the neighbour set is a tie)."""
    keep = labels >= 0
    bank, labels = bank[keep], labels[keep]
    distances = reference_distances(queries, bank, metric)
    scores = torch.zeros(len(queries), num_classes, dtype=torch.float64)
    decided = torch.ones(len(queries), dtype=torch.bool)
    k = min(k, len(bank))
    for i, row in enumerate(distances.tolist()):
        ranked = sorted(range(len(row)), key=lambda j: row[j])
        if k == 0:
            scores[i] = 1.0 / num_classes
            continue
        if k < len(row):
            gap = row[ranked[k]] - row[ranked[k - 1]]
            decided[i] = gap > 1e-6 * (1 + abs(row[ranked[k]]))
        nearest = row[ranked[0]]
        for j in ranked[:k]:
            d = row[j]
            if weighting == "inverse":
                weight = 1 / (d + temperature)
            elif weighting == "exp":
                weight = math.exp(-(d - nearest) / temperature)
            else:
                weight = 1.0
            scores[i, int(labels[j])] += weight
        scores[i] /= scores[i].sum()
    return scores, decided


@pytest.fixture(scope="session")
def knn_reference() -> Callable:
    """``knn_reference(queries, bank, labels, C, k, T, metric, weighting) -> (scores, decided)``."""
    return reference_scores


def _blobs(n: int, dim: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=generator) * 3
    labels = torch.arange(n) % classes
    return centers[labels] + torch.randn(n, dim, generator=generator), labels


@pytest.fixture
def tiny():
    """Factories for in-process runs: ``tiny.data(n, dim, classes, seed)``,
    ``tiny.loader(features, labels, batch_size)``, ``tiny.model(shape)``,
    ``tiny.trainer(callbacks, **kwargs)``."""

    class Tiny:
        data = staticmethod(_blobs)

        @staticmethod
        def loader(features, labels, batch_size=8):
            return DataLoader(DictDataset(x=features, label=labels), batch_size=batch_size)

        @staticmethod
        def model(shape=None):
            return Backbone(shape=shape)

        @staticmethod
        def trainer(callbacks, **kwargs):
            return quiet_trainer(callbacks=callbacks, **kwargs)

    return Tiny


@pytest.fixture
def make_knn() -> Callable[..., OnlineKNN]:
    """``make_knn(**overrides)``: the tests' OnlineKNN (3 classes, k=5, a 32-row queue)."""

    def make(**kwargs) -> OnlineKNN:
        settings = {
            "name": "knn",
            "input": "embedding",
            "target": "label",
            "queue_length": 32,
            "metrics": {"accuracy": MulticlassAccuracy(3, average="micro")},
            "num_classes": 3,
            "k": 5,
        }
        return OnlineKNN(**{**settings, **kwargs})

    return make


@pytest.fixture
def messages():
    """Every loguru line logged while the test runs."""
    with captured_logs() as lines:
        yield lines
