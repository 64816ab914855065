import sys
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from spt_core import distributed
from spt_queue import OnlineQueue, find_or_create_queue, find_queue, read_aligned


def fake_trainer(*callbacks):
    return SimpleNamespace(callbacks=list(callbacks))


def feed(queue, batch, outputs=None):
    module = SimpleNamespace(device=torch.device("cpu"))
    queue.on_train_batch_end(None, module, outputs, batch, 0)


def test_outputs_win_over_the_batch_and_rows_are_detached():
    queue = OnlineQueue("z", queue_length=8)
    features = torch.ones(2, 3, requires_grad=True)
    feed(queue, {"z": torch.zeros(2, 3)}, outputs={"z": features})
    rows = queue.read()
    assert rows.tolist() == [[1.0] * 3] * 2
    assert not rows.requires_grad


def test_dim_flattens_and_checks_features():
    queue = OnlineQueue("z", queue_length=8, dim=(2, 3))
    feed(queue, {"z": torch.ones(4, 2, 3)})
    assert queue.read().shape == (4, 6)
    with pytest.raises(ValueError, match="has 5 features per row, expected dim=6"):
        feed(queue, {"z": torch.ones(4, 5)})


def test_changing_row_shape_names_the_key():
    queue = OnlineQueue("z", queue_length=8)
    feed(queue, {"z": torch.ones(4, 3)})
    with pytest.raises(ValueError, match="'z'"):
        feed(queue, {"z": torch.ones(4, 5)})


def test_missing_key_lists_what_exists():
    queue = OnlineQueue("z", queue_length=8)
    with pytest.raises(KeyError, match=r"OnlineQueue\[name=z\].*\['x', 'y'\]"):
        feed(queue, {"x": torch.ones(1), "y": torch.ones(1)})


def test_errors_of_a_discovered_queue_name_the_callbacks_that_read_it():
    trainer = fake_trainer()
    queue = find_or_create_queue(trainer, "z", 4, dim=3, consumer="OnlineKNN[name=knn]")
    assert find_or_create_queue(trainer, "z", 4, consumer="LatentViz[name=map]") is queue
    find_or_create_queue(trainer, "z", 4, consumer="OnlineKNN[name=knn]")  # named once
    owners = r"OnlineQueue\[name=z\] \(filled for OnlineKNN\[name=knn\], LatentViz\[name=map\]\)"
    with pytest.raises(KeyError, match=owners + r" needs the key 'z'.*\['x'\]"):
        feed(queue, {"x": torch.ones(1)})
    with pytest.raises(ValueError, match=owners + ": 'z' has 5 features per row, expected dim=3"):
        feed(queue, {"z": torch.ones(2, 5)})


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"key": "", "queue_length": 3}, ValueError, "key must be a non-empty string"),
        ({"key": 3, "queue_length": 3}, TypeError, "key must be a non-empty string"),
        ({"key": "z", "queue_length": 0}, ValueError, "queue_length must be an integer >= 1"),
        ({"key": "z", "queue_length": 2.0}, TypeError, "queue_length must be an integer >= 1"),
        ({"key": "z", "queue_length": 3, "dim": 0}, ValueError, "dim must hold positive sizes"),
        ({"key": "z", "queue_length": 3, "dim": 1.5}, TypeError, "dim must be None, an int or"),
        ({"key": "z", "queue_length": 3, "dtype": "float32"}, TypeError, "dtype"),
        ({"key": "z", "queue_length": 3, "gather_distributed": True}, TypeError, "gather"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    """A value out of range is a ValueError, a value of the wrong type a TypeError; queues
    no longer gather, so ``gather_distributed`` is refused."""
    with pytest.raises(error, match=match) as caught:
        OnlineQueue(**kwargs)
    if "gather_distributed" not in kwargs:  # Python's own message for an unknown keyword
        owner = "OnlineQueue: " if kwargs["key"] in ("", 3) else "OnlineQueue[name=z]: "
        assert str(caught.value).startswith(owner)


def test_consumers_share_one_queue_and_read_their_own_rows():
    trainer = fake_trainer()
    small = find_or_create_queue(trainer, "z", 2)
    large = find_or_create_queue(trainer, "z", 5)
    assert small is large and len(trainer.callbacks) == 1
    assert small.queue_length == 5
    find_or_create_queue(trainer, "z", 3)
    assert small.queue_length == 5  # the largest request, never less
    feed(small, {"z": torch.arange(7)})
    assert small.read(2).tolist() == [5, 6]
    assert small.read(5).tolist() == [2, 3, 4, 5, 6]
    assert small.read(9).tolist() == [2, 3, 4, 5, 6]
    assert len(small) == 5 and small.appended == 7


def test_a_consumer_changes_nothing_of_the_queue_but_its_capacity():
    """What a consumer reads does not depend on which other consumers exist."""
    trainer = fake_trainer()
    queue = find_or_create_queue(trainer, "z", 4, consumer="OnlineKNN[name=a]")
    feed(queue, {"z": torch.arange(6.0).reshape(3, 2)})
    before = queue.read(4), queue.state_dict()
    find_or_create_queue(trainer, "z", 8, consumer="LatentViz[name=b]")
    after = queue.read(4), queue.state_dict()
    assert torch.equal(before[0], after[0])
    assert {k: v for k, v in before[1].items() if k not in ("capacity", "rows")} == {
        k: v for k, v in after[1].items() if k not in ("capacity", "rows")
    }
    assert not hasattr(queue, "gather_distributed")


def test_discovery_is_per_trainer_and_checks_dim():
    first, second = fake_trainer(), fake_trainer()
    queue = find_or_create_queue(first, "z", 4, dim=3)
    assert find_queue(second, "z") is None
    assert find_or_create_queue(second, "z", 4) is not queue
    assert find_or_create_queue(fake_trainer(), "z", 4, previous=queue) is queue
    with pytest.raises(ValueError, match="dim=3"):
        find_or_create_queue(first, "z", 4, dim=5)


def test_read_aligned_refuses_queues_that_saw_different_rows():
    features, labels = OnlineQueue("z", 4), OnlineQueue("y", 4)
    feed(features, {"z": torch.ones(3, 2), "y": torch.arange(3)})
    feed(labels, {"z": torch.ones(3, 2), "y": torch.arange(3)})
    z, y = read_aligned([features, labels], 4, owner="knn")
    assert z.shape == (3, 2) and y.tolist() == [0, 1, 2]
    feed(features, {"z": torch.ones(1, 2)})
    with pytest.raises(RuntimeError, match=r"knn: its queues are not aligned \('z': 4 appended"):
        read_aligned([features, labels], 4, owner="knn")


def test_state_dict_round_trip_with_a_new_length_keeps_the_newest_rows():
    queue = OnlineQueue("z", queue_length=6)
    feed(queue, {"z": torch.arange(10.0).reshape(5, 2)})
    restored = OnlineQueue("z", queue_length=3)
    restored.load_state_dict(queue.state_dict())
    assert restored.read().tolist() == [[4.0, 5.0], [6.0, 7.0], [8.0, 9.0]]
    assert restored.appended == 5
    empty = OnlineQueue("z", queue_length=3)
    empty.load_state_dict(OnlineQueue("z", queue_length=3).state_dict())
    assert len(empty.buffer) == 0


KNN = "OnlineKNN[name=knn]"
OWNER = r"OnlineQueue\[name=label\] \(filled for OnlineKNN\[name=knn\]\)"


@pytest.mark.parametrize(
    ("labels", "shown"),
    [(["cat", "dog"], r"list of str \('cat', \.\.\.\)"), ([("a",), ("b",)], "list of tuple")],
)
def test_strings_are_refused_at_the_first_training_batch_naming_the_consumers(labels, shown):
    queue = find_or_create_queue(fake_trainer(), "label", 4, consumer=KNN)
    with pytest.raises(TypeError, match=OWNER + ": 'label' must be a tensor .* got " + shown):
        feed(queue, {"label": labels})
    assert queue.appended == 0


def test_a_class_label_queue_refuses_float_and_multi_value_labels():
    queue = find_or_create_queue(fake_trainer(), "label", 4, consumer=KNN, class_labels=True)
    with pytest.raises(TypeError, match=OWNER + r": 'label' holds torch.float32 values, but "):
        feed(queue, {"label": torch.tensor([0.0, 0.7])})
    with pytest.raises(ValueError, match=r"one integer class label per row .* shape \(2, 3\)"):
        feed(queue, {"label": torch.zeros(2, 3, dtype=torch.long)})
    with pytest.raises(ValueError, match=r"shape \(\)"):
        feed(queue, {"label": torch.tensor(1)})
    assert queue.appended == 0
    feed(queue, {"label": [1, 2]})  # a list of ints is fine
    feed(queue, {"label": torch.tensor([3, 4], dtype=torch.int32)})
    assert queue.read().tolist() == [1, 2, 3, 4]
    column = find_or_create_queue(fake_trainer(), "label", 4, consumer=KNN, class_labels=True)
    feed(column, {"label": torch.tensor([[3], [4]])})  # (rows, 1) is one label per row too
    plain = OnlineQueue("label", 4)  # without a class-label consumer, floats are rows too
    feed(plain, {"label": torch.tensor([0.5])})


def test_class_labels_need_the_consumer_name():
    with pytest.raises(ValueError, match="consumer"):
        find_or_create_queue(fake_trainer(), "label", 4, class_labels=True)


def test_a_read_is_the_readers_copy_and_the_queue_keeps_none():
    """Evaluations hold no copy of the queue through training: whoever reads owns the copy."""
    queue = OnlineQueue("z", 4)
    feed(queue, {"z": torch.ones(3, 2)})
    for start, end in (
        (queue.on_validation_epoch_start, queue.on_validation_end),
        (queue.on_test_epoch_start, queue.on_test_end),
    ):
        start(None, None)
        rows = queue.read()
        end(None, None)
        rows.zero_()
        assert queue.read().eq(1).all()
        assert sys.getrefcount(rows) == 2  # only this test holds it


class FakeRanks:
    """Two ranks as ``spt_core.distributed`` would show them, holding the same rows."""

    def __init__(self, monkeypatch):
        self.calls = 0
        monkeypatch.setattr(distributed, "is_distributed", lambda: True)
        monkeypatch.setattr(distributed, "gather_uneven", self.gather)

    def gather(self, tensor):
        self.calls += 1
        return torch.cat((tensor, tensor))


def test_state_dict_never_communicates_and_the_checkpoint_hook_gathers(monkeypatch):
    queue = OnlineQueue("z", 4)
    feed(queue, {"z": torch.arange(6.0).reshape(3, 2)})
    ranks = FakeRanks(monkeypatch)
    state = queue.state_dict()
    assert ranks.calls == 0
    assert state["rows_per_rank"] == [3] and state["appended_per_rank"] == [3]
    gathered = queue.gather_checkpoint_state(state)
    assert ranks.calls == 2  # the counts, then the rows: in this order on every rank
    assert gathered["rows"].tolist() == state["rows"].tolist() * 2
    assert gathered["rows_per_rank"] == [3, 3] and gathered["appended_per_rank"] == [3, 3]
    checkpoint = {"callbacks": {queue.state_key: queue.state_dict()}}
    queue.on_save_checkpoint(None, None, checkpoint)
    assert checkpoint["callbacks"][queue.state_key]["rows_per_rank"] == [3, 3]


def test_a_checkpoint_with_other_rows_than_the_declared_dim_is_refused():
    source = OnlineQueue("z", 4)
    feed(source, {"z": torch.ones(3, 5)})
    declared = OnlineQueue("z", 4, dim=3)
    with pytest.raises(ValueError, match=r"rows of 'z' shaped \(5,\), .* declared with dim=3"):
        declared.load_state_dict(source.state_dict())
    undeclared = OnlineQueue("z", 4)
    feed(undeclared, {"z": torch.zeros(2, 3, dtype=torch.float16)})
    undeclared.load_state_dict(source.state_dict())
    assert torch.equal(undeclared.read(), torch.ones(3, 5))


def test_a_bad_discovery_argument_registers_nothing():
    """Every argument is checked before a queue is found, created or registered."""
    trainer = fake_trainer()
    with pytest.raises(TypeError, match=r"find_or_create_queue: dtype must be a torch\.dtype"):
        find_or_create_queue(trainer, "z", 4, dtype="float32")
    with pytest.raises(TypeError, match="find_or_create_queue: class_labels must be a bool"):
        find_or_create_queue(trainer, "z", 4, consumer="knn", class_labels=1)
    assert trainer.callbacks == []
    with pytest.raises(TypeError, match="find_queue: trainer must be a lightning Trainer"):
        find_queue([], "z")
    with pytest.raises(TypeError, match="knn: queues must be a list or tuple of OnlineQueue"):
        read_aligned([OnlineQueue("z", 4), "y"], 2, owner="knn")


def test_a_queue_added_to_a_trainer_goes_before_its_checkpoint_callbacks(tmp_path):
    # Lightning runs checkpoint callbacks last: a queue behind one would append a batch's rows
    # after the checkpoint of that batch was written, and a mid-epoch resume would lack them.
    user, checkpoint = Callback(), ModelCheckpoint(dirpath=tmp_path)
    first = fake_trainer(user, checkpoint)
    queue = find_or_create_queue(first, "z", 4)
    assert first.callbacks == [user, queue, checkpoint]
    second = fake_trainer(checkpoint)  # a later fit that re-registers the consumer's queue
    assert find_or_create_queue(second, "z", 4, previous=queue) is queue
    assert second.callbacks == [queue, checkpoint]
