"""OnlineQueue in a real Trainer built from the shared harness (`spt_core.testing`)."""

import pytest
import torch
from torch.utils.data import DataLoader

from spt_core.testing import Backbone, DictDataset, forbid_host_sync, quiet_trainer
from spt_queue import OnlineQueue


def fit(queue: OnlineQueue, n: int = 30, batch_size: int = 4, epochs: int = 1) -> Backbone:
    data = DictDataset(x=torch.randn(n, 3), label=torch.arange(n) % 5)
    model = Backbone(dim=3, width=2)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True)
    quiet_trainer(max_epochs=epochs, callbacks=[queue]).fit(model, loader)
    return model


@pytest.mark.parametrize(("n", "queue_length"), [(30, 8), (30, 64), (7, 7)])
def test_the_queue_keeps_the_last_labels_the_trainer_served(n, queue_length):
    queue = OnlineQueue("label", queue_length)
    model = fit(queue, n=n, epochs=2)
    served = torch.cat(model.seen["train"]) % 5  # a Python-side record, oldest first
    assert queue.read().tolist() == served[-queue_length:].tolist()
    assert queue.buffer.appended == 2 * n


def test_embeddings_are_stored_detached_from_the_graph():
    queue = OnlineQueue("embedding", 10, dim=2)
    fit(queue)
    rows = queue.read()
    assert rows.shape == (10, 2) and not rows.requires_grad


def test_appending_a_training_batch_waits_for_no_device():
    queue = OnlineQueue("embedding", 16, dim=(2, 2))
    batch = {"embedding": torch.randn(5, 2, 2, requires_grad=True)}
    module = Backbone()
    with forbid_host_sync():
        for step in range(5):
            queue.on_train_batch_end(None, module, batch, batch, step)
    assert queue.buffer.appended == 25
