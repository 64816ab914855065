"""On real data (scikit-learn's digits), the uniform vote is scikit-learn's brute-force kNN."""

import pytest
import torch

from spt_knn import knn_predict

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.neighbors import KNeighborsClassifier  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    features, labels = load_digits(return_X_y=True)
    train_x, test_x, train_y, test_y = train_test_split(
        features, labels, test_size=0.3, random_state=0, stratify=labels
    )
    scaler = StandardScaler().fit(train_x)
    return scaler.transform(train_x), scaler.transform(test_x), train_y, test_y


@pytest.mark.parametrize("metric", ["euclidean", "manhattan"])
@pytest.mark.parametrize("k", [1, 5, 12])
def test_uniform_vote_predicts_what_sklearn_predicts_without_ties(digits, metric, k):
    train_x, test_x, train_y, _ = digits
    reference = KNeighborsClassifier(n_neighbors=k, weights="uniform", algorithm="brute")
    reference.set_params(metric=metric).fit(train_x, train_y)
    expected = torch.from_numpy(reference.predict(test_x))
    # k + 1 neighbours tell whether the k-th is tied with the next (then either may be picked).
    distances, _ = reference.kneighbors(test_x, n_neighbors=k + 1)
    gap = torch.from_numpy(distances[:, k] - distances[:, k - 1])

    scores = knn_predict(
        torch.tensor(test_x, dtype=torch.float32),
        torch.tensor(train_x, dtype=torch.float32),
        torch.from_numpy(train_y),
        num_classes=10,
        k=k,
        distance_metric=metric,
        weighting="uniform",
    )
    top2 = scores.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1] > 1e-6) & (gap > 1e-4)
    assert clear.float().mean() > 0.9  # nearly every test digit takes part in the comparison
    assert torch.equal(scores.argmax(dim=1)[clear], expected[clear])
    assert (expected == torch.from_numpy(digits[3])).float().mean() > 0.9  # it is real kNN
