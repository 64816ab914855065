"""OnlineProbe under DDP on CPU (2 gloo processes) against one process on the same batches."""

import pytest
import torch


def assert_same_probe(a, b, exact):
    for key, value in a["weights"].items():
        if exact:
            assert torch.equal(value, b["weights"][key]), key
        else:
            torch.testing.assert_close(value, b["weights"][key], rtol=1e-4, atol=1e-5)
    assert a["steps"] == b["steps"]
    assert a["lr"] == pytest.approx(b["lr"])


@pytest.mark.ddp
def test_ddp_probes_agree_across_ranks_and_with_one_process(run_scenario):
    settings = {"n": 64, "epochs": 2, "accumulate": 3, "clip": 0.5}
    ranks = run_scenario("probe_train", devices=2, batch_size=4, **settings)
    # One process seeing each global batch (both ranks' rows) at once.
    (single,) = run_scenario("probe_train", devices=1, batch_size=8, **settings)
    for rank, result in enumerate(ranks):
        assert torch.cat(result["seen"]).tolist() == list(range(rank, 64, 2)) * 2
    for key, value in single["backbone"].items():
        torch.testing.assert_close(ranks[0]["backbone"][key], value, rtol=1e-4, atol=1e-5)
    for name in ("linear", "mlp"):
        assert_same_probe(ranks[0][name], ranks[1][name], exact=True)
        assert_same_probe(ranks[0][name], single[name], exact=False)
    assert ranks[0]["linear"]["steps"] == 2 * 3  # 8 batches per epoch: windows 3, 3, 2
    assert ranks[0]["mlp"]["steps"] == 2 * 8
    assert ranks[0]["mlp"]["lr"] == pytest.approx(1e-2 * 0.5**5)  # StepLR every 3 steps
    # The default LARS has no momentum, hence no state; AdamW's moments agree.
    assert not ranks[0]["linear"]["optimizer"]["state"]
    assert not single["linear"]["optimizer"]["state"]
    state = ranks[0]["mlp"]["optimizer"]["state"]
    assert len(state) == 4
    for slot, values in state.items():
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(values[name], ranks[1]["mlp"]["optimizer"]["state"][slot][name])
            torch.testing.assert_close(
                values[name], single["mlp"]["optimizer"]["state"][slot][name], rtol=1e-4, atol=1e-6
            )
    # Metrics are global: both ranks log the accuracy over the whole validation set.
    assert ranks[0]["accuracy"] == ranks[1]["accuracy"]
    assert ranks[0]["accuracy"].item() == pytest.approx(single["accuracy"].item(), abs=1 / 64)
    assert ranks[0]["registered"] == ["linear", "mlp"]


@pytest.mark.ddp
def test_batchnorm_probe_starts_in_step_and_shares_its_running_statistics(run_scenario, tmp_path):
    """A probe with float32 weights and an int64 counter (BatchNorm) starts from rank 0's
    values (the start issues its collectives in the module's order on both ranks, which were
    started with different hash seeds); each validation run and epoch end averages the
    running statistics over the ranks, and the checkpoint holds that common value."""
    ckpt = tmp_path / "bn.ckpt"
    first, second = run_scenario("probe_batchnorm", devices=2, save=str(ckpt), hashseed=12345)
    assert second["hashseed"] == "12345" and first["hashseed"] != "12345"
    assert first["steps"] == second["steps"] == 2 * 8
    for key, value in first["weights"].items():
        assert torch.equal(value, second["weights"][key]), key
    # Before each validation run the ranks' own statistics differ; afterwards every rank holds
    # their mean (the counter, an integer, is rank 0's).
    assert len(first["own"]) == len(second["own"]) == 2
    mine, theirs = first["own"][-1], second["own"][-1]
    assert not torch.equal(mine["0.running_mean"], theirs["0.running_mean"])
    for key in ("0.running_mean", "0.running_var"):
        assert torch.equal(first["weights"][key], (mine[key] + theirs[key]) / 2), key
    assert torch.equal(first["weights"]["0.num_batches_tracked"], mine["0.num_batches_tracked"])
    saved = torch.load(ckpt, weights_only=False)["callbacks"]["OnlineProbe[name=bn]"]["module"]
    for key, value in first["weights"].items():
        assert torch.equal(saved[key], value), key
    # Every epoch value is global: both ranks log the same numbers (a step's loss is the
    # rank's own batch's).
    assert first["logged"].keys() == second["logged"].keys() >= {
        "train/bn_loss", "train/bn_accuracy", "eval/bn_accuracy",
    }  # fmt: skip
    for key, value in first["logged"].items():
        assert key.endswith("_step") or torch.equal(value, second["logged"][key]), key
