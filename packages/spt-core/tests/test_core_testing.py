"""spt_core.testing: the harness every package's tests share."""

from __future__ import annotations

import functools
import random
import socket

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from spt_core.testing import (
    Backbone,
    CallbackTester,
    DictDataset,
    RecordingLogger,
    free_port,
    launch,
    quiet_trainer,
    run_ranks,
)


class LogEpochMean(Callback):
    """Logs the epoch mean of one output key and counts batches (a callback to test)."""

    def __init__(self, key: str = "embedding") -> None:
        self.key = key

    def on_validation_batch_end(self, trainer, module, outputs, batch, *args) -> None:
        value = outputs[self.key].float().mean()
        module.log("val_mean", value, on_epoch=True, sync_dist=True, batch_size=len(value.view(-1)))


def test_quiet_trainer_is_quiet_and_overridable():
    trainer = quiet_trainer()
    assert trainer.logger is None and trainer.max_epochs == 1
    assert trainer.checkpoint_callback is None and trainer.progress_bar_callback is None
    assert quiet_trainer(max_epochs=3).max_epochs == 3


def test_dict_dataset_rows_and_length_check():
    data = DictDataset(x=torch.arange(6.0).reshape(3, 2), label=torch.tensor([4, 5, 6]))
    assert len(data) == 3
    row = data[2]
    assert row["x"].tolist() == [4.0, 5.0] and int(row["label"]) == 6 and int(row["index"]) == 2
    with pytest.raises(ValueError, match=r"DictDataset.*equally long.*'x': 3.*'y': 2"):
        DictDataset(x=torch.zeros(3), y=torch.zeros(2))


def test_backbone_identity_linear_and_custom_outputs():
    batch = {"x": torch.arange(6.0).reshape(2, 3), "label": torch.tensor([0, 1])}
    identity = Backbone(shape=(3, 1), feature_key="z").validation_step(batch, 0)
    assert torch.equal(identity["z"], batch["x"].reshape(2, 3, 1))
    assert torch.equal(identity["label"], batch["label"])
    linear = Backbone(dim=3, width=2, detach=True, feature_dtype=torch.float64)
    out = linear.training_step(batch, 0)
    assert out["embedding"].shape == (2, 2) and out["embedding"].dtype == torch.float64
    assert not out["embedding"].requires_grad and out["loss"].requires_grad
    custom = Backbone(outputs=lambda b, m: {"preds": b["label"]}).test_step(batch, 0)
    assert sorted(custom) == ["loss", "preds"]


def test_recording_logger_keeps_values_in_order():
    logger = RecordingLogger()
    logger.log_metrics({"a": 1.0}, step=0)
    logger.log_metrics({"a": torch.tensor(2.0), "b": 3}, step=1)
    assert logger.logged() == {"a": [1.0, 2.0], "b": [3.0]}
    assert logger.names() == {"a", "b"}


def _tester(**kwargs) -> CallbackTester:
    x = torch.arange(16.0).reshape(8, 2)
    kwargs.setdefault("make_callback", LogEpochMean)
    return CallbackTester(make_module=Backbone, val=DictDataset(x=x), batch_size=2, **kwargs)


def test_callback_tester_single_process_matches_reference():
    tester = _tester()
    logged = tester.run(stage="validate")
    tester.assert_logged(logged, {"val_mean": torch.arange(16.0).mean()})
    with pytest.raises(AssertionError, match=r"'val_mean': logged 7\.5, expected 7\.0"):
        tester.assert_logged(logged, {"val_mean": 7.0})
    with pytest.raises(AssertionError, match="'other' was not logged"):
        tester.assert_logged(logged, {"other": 1.0})
    with pytest.raises(ValueError, match=r"stage must be 'fit' or 'validate', got 'test'"):
        tester.run(stage="test")


def test_callback_tester_fit_logs_every_epoch():
    tester = _tester(train=DictDataset(x=torch.ones(4, 2)), trainer_kwargs={"max_epochs": 2})
    assert tester.run()["val_mean"] == [7.5, 7.5]


def test_callback_tester_two_gloo_processes_match_single_process():
    tester = _tester(make_callback=functools.partial(LogEpochMean, key="x"))
    single = tester.run(stage="validate")
    both = tester.run_ddp(stage="validate")
    tester.assert_logged(both, {"val_mean": 7.5})
    assert both == single


def test_callback_tester_ddp_failure_is_reported():
    tester = _tester(make_callback=functools.partial(LogEpochMean, key="missing"))
    with pytest.raises(AssertionError, match="DDP run failed"):
        tester.run_ddp(stage="validate")


def test_free_port_is_below_the_ephemeral_range_and_bindable():
    start = launch._ephemeral_start()
    for _ in range(20):
        port = free_port()
        assert 10_000 <= port < start
        with socket.socket() as probe:
            probe.bind(("", port))


def test_free_port_skips_a_taken_port_and_says_when_all_are(monkeypatch):
    with socket.socket() as taken:
        taken.bind(("", free_port()))
        taken.listen()
        busy = taken.getsockname()[1]
        other = free_port()
        draws = iter([busy, other])
        monkeypatch.setattr(random.SystemRandom, "randrange", lambda self, a, b: next(draws))
        assert free_port() == other
        monkeypatch.setattr(random.SystemRandom, "randrange", lambda self, a, b: busy)
        with pytest.raises(RuntimeError, match="3 ports"):
            free_port(attempts=3)


RANK_SCRIPT = """
import os, sys
rank, port = int(sys.argv[1]), int(sys.argv[2])
print(f"rank {rank} of port {port} says {sys.argv[3]} {os.environ.get('GREETING', '-')}")
sys.exit(3 if rank == int(os.environ.get("FAIL_RANK", -1)) else 0)
"""


def test_run_ranks_runs_the_script_once_per_rank_with_one_port(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    logs = run_ranks(script, "hi", world_size=3, env=[{}, {"GREETING": "hello"}, {}])
    words = [log.split() for log in logs]
    assert [w[1] for w in words] == ["0", "1", "2"]
    assert len({w[4] for w in words}) == 1  # the same port
    assert [w[6:] for w in words] == [["hi", "-"], ["hi", "hello"], ["hi", "-"]]


def test_run_ranks_reports_a_failing_rank_and_a_wrong_env(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    with pytest.raises(AssertionError, match=r"rank 1 \(exit 3\)") as failure:
        run_ranks(script, "hi", env=[{"FAIL_RANK": "1"}] * 2)
    assert "rank 0 (exit" not in str(failure.value)
    with pytest.raises(ValueError, match="env must hold 2 mappings, got 1"):
        run_ranks(script, env=[{}])
