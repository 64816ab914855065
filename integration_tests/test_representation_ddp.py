"""The representation Metrics under 2-process DDP on CPU (uneven ranks, a rank without
validation rows) equal one process and the functions over every row."""

import pytest
import torch

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

FUNCTIONS = {
    "rankme": lambda z1, z2: rankme(z1),
    "erank": lambda z1, z2: effective_rank(z1),
    "dims": lambda z1, z2: dims_for_energy(z1, energy=0.9),
    "std": lambda z1, z2: embedding_std(z1),
    "cos": lambda z1, z2: mean_cosine_similarity(z1),
    "align": alignment,
    "unif": uniformity,
    "lidar": lidar,
}


def expected_values(z1, z2, recent):
    """Every Metric's value over all rows; ``unif4`` over the rows at ``recent``."""
    values = {name: float(function(z1, z2)) for name, function in FUNCTIONS.items()}
    values["unif4"] = float(uniformity(z1[recent], z2[recent]))
    return values


def assert_values(found, expected, where):
    assert set(found) == set(expected), where
    for name, value in expected.items():
        assert found[name] == pytest.approx(value, rel=1e-5, abs=1e-6), (where, name)


@pytest.mark.ddp
def test_ddp_representation_metrics_equal_one_process_and_the_functions(run_scenario):
    (single,) = run_scenario("representation_ddp", devices=1)
    ranks = run_scenario("representation_ddp", devices=2)
    train, val = single["train"], single["val"]
    last_four = {
        1: torch.arange(21, 25),
        2: torch.cat([torch.arange(10, 14), torch.arange(21, 25)]),
    }
    for devices, results in ((1, [single]), (2, ranks)):
        for rank, result in enumerate(results):
            where = f"devices={devices} rank={rank}"
            logged = result["logged"]
            train_expected = expected_values(*train, recent=last_four[devices])
            train_logged = {
                name[: -len("/train")]: v for name, v in logged.items() if name.endswith("/train")
            }
            assert_values(train_logged, train_expected, f"{where} train")
            val_expected = expected_values(*val, recent=torch.arange(9, 13))  # rank 0 has all
            val_logged = {
                name[: -len("/val")]: v for name, v in logged.items() if name.endswith("/val")
            }
            assert_values(val_logged, val_expected, f"{where} val")
            assert_values(result["own"], val_expected, f"{where} LightningModule")
