import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy as Accuracy

from spt_core import (
    StageMetrics,
    callbacks_metrics,
    callbacks_modules,
    metric_name,
    named_metrics,
    unique_names,
)
from spt_core.metric_states import load_metric_states, metric_states


class MulticlassAccuracy:
    def __init__(self, top_k: int = 1) -> None:
        self.top_k = top_k
        self.total = 0.0

    def update(self, value: float) -> None:
        self.total += value

    def compute(self) -> torch.Tensor:
        return torch.tensor(self.total)

    def reset(self) -> None:
        self.total = 0.0


def test_names_drop_the_task_prefix_and_keep_top_k_apart():
    named = named_metrics([MulticlassAccuracy(), MulticlassAccuracy(top_k=5)], owner="probe")
    assert list(named) == ["accuracy", "accuracy_top5"]


def test_function_partial_and_lambda_names():
    def alignment(z1, z2):
        return 0

    assert metric_name(alignment) == "alignment"
    assert metric_name(functools.partial(alignment, z2=1)) == "alignment"
    assert list(named_metrics([alignment, alignment, lambda: 0], owner="m")) == [
        "alignment",
        "alignment_2",
        "lambda",
    ]


@given(st.lists(st.sampled_from(["a", "b", "a_2", "c"]), max_size=12))
def test_unique_names_are_unique_and_keep_first_occurrences(names):
    result = unique_names(names)
    assert len(set(result)) == len(result) == len(names)
    for original, new in zip(names, result, strict=True):
        assert new.startswith(original)


@pytest.mark.parametrize(
    ("metrics", "error"), [({1: None}, TypeError), ({"a/b": None}, ValueError)]
)
def test_bad_dict_keys_are_named(metrics, error):
    with pytest.raises(error, match="metrics keys"):
        named_metrics(metrics, owner="knn")


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: StageMetrics([torch.nn.Identity()]), "StageMetrics: metrics must be a dict"),
        (lambda: unique_names("acc"), "unique_names: names must be an iterable of strings"),
        (lambda: unique_names([1, 2]), "unique_names: names must be an iterable of strings"),
        (lambda: callbacks_metrics(object()), "callbacks_metrics: pl_module must be a"),
        (lambda: callbacks_modules(3), "callbacks_modules: pl_module must be a"),
    ],
    ids=["stage metrics", "a string", "numbers", "metrics of an object", "modules of an int"],
)
def test_arguments_python_used_to_refuse_are_named(call, match):
    """A list of metrics, a string of names or an object without ``__dict__`` failed inside
    ``dict()``, ``str`` formatting or ``object.__setattr__``; a string became its letters."""
    with pytest.raises(TypeError, match=match):
        call()


def test_stages_and_dataloaders_never_mix():
    prototype = MulticlassAccuracy()
    stages = StageMetrics({"acc": prototype})
    stages.update("train", 0, 1.0)
    stages.update("val", 0, 10.0)
    stages.update("val", 1, 100.0)
    assert prototype.total == 0.0
    assert stages.compute_and_reset("val", num_dataloaders=2) == {
        "acc/dataloader_idx_0": torch.tensor(10.0),
        "acc/dataloader_idx_1": torch.tensor(100.0),
    }
    assert stages.compute_and_reset("val", num_dataloaders=2) == {}
    assert stages.compute_and_reset("train", num_dataloaders=1) == {"acc": torch.tensor(1.0)}
    assert set(stages.all_live()) == {"train/0", "val/0", "val/1"}


def test_skipped_loaders_are_reset_without_being_computed():
    stages = StageMetrics({"acc": MulticlassAccuracy()})
    stages.update("val", 0, 10.0)
    stages.update("val", 1, 100.0)
    assert stages.compute_and_reset("val", num_dataloaders=2, skip={1}) == {
        "acc/dataloader_idx_0": torch.tensor(10.0)
    }
    assert stages.get("val", 1)["acc"].total == 0.0
    stages.update("val", 1, 5.0)  # the next epoch starts from zero
    assert stages.compute_and_reset("val", num_dataloaders=2) == {
        "acc/dataloader_idx_1": torch.tensor(5.0)
    }


class Labels(Metric):
    """Every labelled target seen (a list state) and the largest (a max state)."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("targets", default=[], dist_reduce_fx="cat")
        self.add_state("top", default=torch.tensor(-1), dist_reduce_fx="max")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.targets.append(target)
        if len(target):
            self.top = torch.maximum(self.top, target.max())

    def compute(self) -> torch.Tensor:
        return torch.cat([*self.targets, self.top[None]]) if self.targets else self.top[None]


class Hits:
    """A metric without torchmetrics states: it is not checkpointed."""

    def __init__(self) -> None:
        self.hits = 0

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.hits += int((preds.argmax(1) == target).sum())

    def compute(self) -> torch.Tensor:
        return torch.tensor(self.hits)

    def reset(self) -> None:
        self.hits = 0


def torchmetrics_stages() -> StageMetrics:
    def accuracy(average):
        return Accuracy(num_classes=3, average=average, validate_args=False)

    return StageMetrics(
        {
            "accuracy": accuracy("micro"),
            "labels": Labels(),
            "hits": Hits(),
            # A CompositionalMetric: its states are those of its two inner metrics.
            "composed": accuracy("micro") + accuracy("macro"),
        }
    )


batch = st.lists(st.tuples(st.integers(0, 2), st.integers(-1, 2)), min_size=1, max_size=5).filter(
    lambda rows: any(target >= 0 for _, target in rows)  # torchmetrics refuses empty updates
)


@settings(max_examples=40, deadline=None)
@given(st.lists(batch, min_size=1, max_size=6), st.integers(0, 6))
def test_states_restored_mid_epoch_compute_what_the_uninterrupted_copies_compute(batches, cut):
    """Copies saved after ``cut`` batches and restored into fresh copies, which then see the
    remaining batches, compute what copies that saw every batch compute (``hits`` aside)."""

    def feed(stages, part):
        for rows in part:
            preds, target = (torch.tensor(column) for column in zip(*rows, strict=True))
            stages.update_labelled("train", 0, torch.nn.functional.one_hot(preds, 3), target)

    straight, before, resumed = torchmetrics_stages(), torchmetrics_stages(), torchmetrics_stages()
    feed(straight, batches)
    feed(before, batches[:cut])
    saved = before.states("train", synchronise=True)
    assert set(saved) == ({"accuracy", "labels", "composed"} if cut else set())
    assert resumed.load_states("train", 0, saved) == []
    feed(resumed, batches[cut:])
    expected = straight.compute_and_reset("train", num_dataloaders=1)
    got = resumed.compute_and_reset("train", num_dataloaders=1)
    assert set(got) == set(expected)
    for name in ("accuracy", "labels", "composed"):
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0)


def test_states_of_another_metric_under_the_same_name_are_not_restored():
    saved = StageMetrics({"accuracy": Accuracy(num_classes=3, average="macro")})
    saved.update("train", 0, torch.eye(3), torch.arange(3))
    micro = StageMetrics({"accuracy": Accuracy(num_classes=3, average="micro")})
    assert micro.load_states("train", 0, saved.states("train")) == ["accuracy"]
    micro.update("train", 0, torch.eye(3)[[0, 0]], torch.tensor([0, 1]))
    assert micro.compute_and_reset("train", num_dataloaders=1)["accuracy"] == 0.5  # fresh


@pytest.mark.parametrize(
    ("reduction", "widths", "entries"), [("cat", (4, 5), 2), (None, (4, 4), 2), ("cat", (4, 4), 1)]
)
def test_list_states_are_concatenated_only_where_torchmetrics_would(reduction, widths, entries):
    """Entries of a list state are one per update (per image, say) unless the state is reduced
    by concatenation and its rows share their width."""

    class Boxes(Metric):
        def __init__(self) -> None:
            super().__init__()
            self.add_state("boxes", default=[], dist_reduce_fx=reduction)

        def update(self, boxes: torch.Tensor) -> None:
            self.boxes.append(boxes)

        def compute(self) -> torch.Tensor:
            return torch.tensor(float(sum(len(b) for b in self.boxes)))

    boxes = Boxes()
    boxes.update(torch.ones(2, widths[0]))
    boxes.update(torch.ones(3, widths[1]))
    saved = metric_states(boxes)
    assert len(saved["boxes"]) == entries
    restored = Boxes()
    assert load_metric_states(restored, saved)
    assert restored.compute() == 5
    assert len(restored.boxes) == entries
