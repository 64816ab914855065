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
    state = ranks[0]["linear"]["optimizer"]["state"]
    for slot, values in state.items():
        torch.testing.assert_close(
            values["momentum_buffer"],
            single["linear"]["optimizer"]["state"][slot]["momentum_buffer"],
            rtol=1e-4,
            atol=1e-5,
        )
    # Metrics are global: both ranks log the accuracy over the whole validation set.
    assert ranks[0]["accuracy"] == ranks[1]["accuracy"]
    assert ranks[0]["accuracy"].item() == pytest.approx(single["accuracy"].item(), abs=1 / 64)
    assert ranks[0]["registered"] == ["linear", "mlp"]
