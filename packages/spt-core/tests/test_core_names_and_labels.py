"""Unique callback names on a Trainer, and unlabelled rows kept out of metrics."""

import inspect
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.pytorch import Callback
from lightning.pytorch.utilities.warnings import PossibleUserWarning

from spt_core import SPTCallback, StageMetrics
from spt_core.testing import quiet_trainer


class Knn(SPTCallback):
    pass


class Probe(SPTCallback):
    pass


class Store(SPTCallback):
    unique_name = False


def test_two_callbacks_of_different_classes_with_one_name_are_refused_at_setup():
    knn, probe = Knn("x"), Probe("x")
    trainer = quiet_trainer(callbacks=[knn, probe])
    with pytest.raises(ValueError, match=r"Probe\[name=x\].*'x'") as failure:
        knn.setup(trainer, None, "fit")
    assert "Knn[name=x]" in str(failure.value)


def test_distinct_names_and_callbacks_that_opt_out_pass():
    knn, probe, store = Knn("x"), Probe("y"), Store("x")
    trainer = quiet_trainer(callbacks=[knn, probe, store])
    for callback in (knn, probe, store):
        callback.setup(trainer, None, "fit")


class ClassHits:
    """A metric without ignore_index: sees every row it is given."""

    def __init__(self):
        self.seen = []

    def update(self, preds, target):
        self.seen.append(target.clone())

    def compute(self):
        return torch.cat(self.seen)

    def reset(self):
        self.seen = []


class IgnoringMetric(ClassHits):
    """Like torchmetrics' classification metrics: an ignore_index attribute, None by default."""

    def __init__(self):
        super().__init__()
        self.ignore_index = None

    def compute(self):
        target = torch.cat(self.seen)
        return target[target != self.ignore_index]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(-3, 4), min_size=0, max_size=20))
def test_only_labelled_rows_reach_the_metrics(labels):
    stages = StageMetrics({"plain": ClassHits(), "ignoring": IgnoringMetric()})
    target = torch.tensor(labels, dtype=torch.long)
    stages.update_labelled("val", 0, torch.zeros(len(labels), 5), target)
    values = stages.compute_and_reset("val", num_dataloaders=1)
    expected = [label for label in labels if label >= 0]
    assert values["plain"].tolist() == expected
    assert values["ignoring"].tolist() == expected


def test_the_prototype_keeps_its_ignore_index_and_a_set_one_is_respected():
    prototype, chosen = IgnoringMetric(), IgnoringMetric()
    chosen.ignore_index = 3
    stages = StageMetrics({"default": prototype, "chosen": chosen})
    stages.update_labelled("val", 0, torch.zeros(4, 5), torch.tensor([3, -1, 0, -2]))
    values = stages.compute_and_reset("val", num_dataloaders=1)
    assert prototype.ignore_index is None
    assert values["default"].tolist() == [3, 0]
    # A user's own ignore_index stays; the unlabelled rows are masked out before it applies.
    assert values["chosen"].tolist() == [0]


def test_float_targets_pass_through_unchanged():
    stages = StageMetrics({"plain": ClassHits()})
    target = torch.tensor([-1.5, 0.25])
    stages.update_labelled("train", 0, torch.zeros(2, 1), target)
    assert torch.equal(stages.compute_and_reset("train", num_dataloaders=1)["plain"], target)


def test_validation_and_test_hooks_reach_one_method_with_the_stage():
    class Recorder(SPTCallback):
        def __init__(self):
            super().__init__("recorder")
            self.calls = []

        def _eval_start(self, trainer, pl_module, stage):
            self.calls.append(("start", stage))

        def _eval_epoch_start(self, trainer, pl_module, stage):
            self.calls.append(("epoch_start", stage))

        def _eval_batch_end(self, trainer, pl_module, stage, outputs, batch, dataloader_idx):
            self.calls.append(("batch_end", stage, outputs, batch, dataloader_idx))

        def _eval_epoch_end(self, trainer, pl_module, stage):
            self.calls.append(("epoch_end", stage))

        def _eval_end(self, trainer, pl_module, stage):
            self.calls.append(("end", stage))

    recorder = Recorder()
    for stage, hook in (("val", "validation"), ("test", "test")):
        getattr(recorder, f"on_{hook}_start")(None, None)
        getattr(recorder, f"on_{hook}_epoch_start")(None, None)
        getattr(recorder, f"on_{hook}_batch_end")(None, None, "out", "batch", 3, 1)
        getattr(recorder, f"on_{hook}_batch_end")(None, None, "out", "batch", 4)
        getattr(recorder, f"on_{hook}_epoch_end")(None, None)
        getattr(recorder, f"on_{hook}_end")(None, None)
        assert recorder.calls == [
            ("start", stage),
            ("epoch_start", stage),
            ("batch_end", stage, "out", "batch", 1),
            ("batch_end", stage, "out", "batch", 0),
            ("epoch_end", stage),
            ("end", stage),
        ]
        recorder.calls.clear()


def test_the_routed_hooks_take_lightnings_arguments():
    for hook in ("start", "epoch_start", "batch_end", "epoch_end", "end"):
        for stage in ("validation", "test"):
            name = f"on_{stage}_{hook}"
            routed = inspect.signature(getattr(SPTCallback, name))
            assert (
                routed.parameters.keys()
                == inspect.signature(getattr(Callback, name)).parameters.keys()
            ), name


def test_a_checkpoint_holds_the_gathered_state_and_state_dict_stays_local(tmp_path):
    class Rows(SPTCallback):
        def state_dict(self):
            return {"rows": [1]}

        def gather_checkpoint_state(self, state):
            return {"rows": state["rows"] * 2}  # stands in for a gather over two ranks

    rows = Rows("rows")
    checkpoint = {"callbacks": {rows.state_key: rows.state_dict()}}
    rows.on_save_checkpoint(None, None, checkpoint)
    assert checkpoint["callbacks"][rows.state_key] == {"rows": [1, 1]}
    assert rows.state_dict() == {"rows": [1]}


class LogRecorder:
    """Stands in for a LightningModule: keeps every ``log`` call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object, dict]] = []

    def log(self, name, value, **kwargs) -> None:
        self.calls.append((name, value, kwargs))


def test_log_agreed_logs_without_sync_dist_and_hushes_lightnings_hint_for_those_names():
    hint = "It is recommended to use `self.log({!r}, ..., sync_dist=True)` when logging on epoch"
    module = LogRecorder()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Knn("knn").log_agreed(module, {"eval/knn_accuracy": 0.5}, add_dataloader_idx=False)
        for name in ("eval/knn_accuracy", "eval/other"):
            warnings.warn(hint.format(name), PossibleUserWarning, stacklevel=1)
        warnings.warn(hint.format("eval/knn_accuracy"), UserWarning, stacklevel=1)
    assert module.calls == [
        ("eval/knn_accuracy", 0.5, {"sync_dist": False, "add_dataloader_idx": False})
    ]
    assert [(w.category, str(w.message)) for w in caught] == [
        (PossibleUserWarning, hint.format("eval/other")),
        (UserWarning, hint.format("eval/knn_accuracy")),
    ]
