"""The quality bar of the issue: a faithful map of scikit-learn's digits with default settings."""

from __future__ import annotations

import pytest
import torch

from spt_latentviz import LatentViz, projection_mlp, trustworthiness


def test_default_map_of_digits_reaches_trustworthiness_093_in_300_updates(
    run_fit, backbone, queues_holding
):
    datasets = pytest.importorskip("sklearn.datasets")
    preprocessing = pytest.importorskip("sklearn.preprocessing")
    manifold = pytest.importorskip("sklearn.manifold")
    digits = datasets.load_digits()
    x = preprocessing.StandardScaler().fit_transform(digits.data)
    features = torch.tensor(x, dtype=torch.float32)
    labels = torch.tensor(digits.target)
    torch.manual_seed(0)
    # Defaults everywhere (optimizer, k_neighbors, n_negatives) except the cadence: one
    # update per batch. The queue already holds every digit; the backbone adds no rows.
    viz = LatentViz(
        "digits",
        "embedding",
        "label",
        projection_mlp(64),
        queue_length=len(features),
        update_interval=1,
    )
    run_fit(
        [viz, *queues_holding(features, labels)],
        features[:300],
        labels[:300],
        batch_size=1,
        validate=False,
        model=backbone(64, emit_rows=False),
    )
    assert viz.optimizer_steps == 300
    z = viz.project(features)
    score = trustworthiness(features, z, 10).item()
    assert score >= 0.93
    expected = manifold.trustworthiness(x, z.double().numpy(), n_neighbors=10)
    assert score == pytest.approx(expected, abs=1e-4)
