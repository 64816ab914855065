"""Every spt callback on one Trainer, with automatic and manual optimization, in fp32 and
bf16-mixed: every value is logged and finite, and the backbone trains exactly as it does
without any callback."""

import math
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "scenarios"))  # e2e_setup, shared with scenarios
import e2e_setup as e2e


def fit_backbone(manual, precision, callbacks):
    """Two epochs from seed 0; returns the Trainer, the model and its initial weights."""
    L.seed_everything(0, verbose=False)
    # Dropout draws global random numbers every step: a callback that drew any would show.
    model = e2e.Backbone(manual=manual, dropout=0.2)
    initial = {key: value.clone() for key, value in model.state_dict().items()}
    fit = e2e.make_trainer(max_epochs=2, precision=precision, callbacks=callbacks)
    fit.fit(model, datamodule=e2e.Rows(batch_size=8))
    return fit, model, initial


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("manual", [False, True], ids=["automatic", "manual"])
def test_all_callbacks_log_finite_values_and_leave_the_backbone_alone(tmp_path, manual, precision):
    maps = tmp_path / "maps"
    fit, model, initial = fit_backbone(manual, precision, e2e.callbacks(save_dir=maps))
    values = e2e.logged(fit)
    assert set(e2e.REQUIRED) <= set(values), set(e2e.REQUIRED) - set(values)
    assert all(math.isfinite(value) for value in values.values()), values
    for key in ("eval/knn_accuracy", "eval/linear_accuracy", "eval/mlp_accuracy"):
        assert 0.5 < values[key] <= 1.0, key  # 3 separable blobs: well above chance
    assert 0.0 <= values["eval/viz_trustworthiness"] <= 1.0
    assert values["probe_accuracy/val"] == values["eval/linear_accuracy"]  # the same preds
    assert {"epoch_0000.npz", "epoch_0001.npz"} <= {path.name for path in maps.iterdir()}

    # Callback state stays out of the model: only the backbone's own weights are registered.
    assert set(model.callbacks_modules) == {"linear", "mlp", "viz"}
    assert set(model.state_dict()) == set(initial)

    # The same fit without callbacks. Under bf16-mixed the weights are still fp32 (autocast
    # only runs the step's products in bf16, deterministically on CPU) and callbacks run
    # outside autocast, so the comparison stays bitwise in both precisions.
    _, alone, _ = fit_backbone(manual, precision, [])
    for key, value in model.state_dict().items():
        assert value.dtype == torch.float32
        assert torch.equal(value, alone.state_dict()[key]), key
        assert not torch.equal(value, initial[key]), f"{key} did not train"
