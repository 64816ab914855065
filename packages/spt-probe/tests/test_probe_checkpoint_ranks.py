"""An OnlineProbe checkpoint written mid-epoch under DDP resumes exactly on every rank.

Two gloo processes feed an OnlineProbe their own rows (and their own share of unlabelled rows)
through its training hooks; the checkpoint is written through ``on_save_checkpoint`` as
Lightning calls it on every rank, and rank 0's copy (the file Lightning writes) resumes a
fresh probe on every rank. The resumed probe's weights, its logged epoch loss and its epoch
accuracy and AUROC must be the uninterrupted run's.

Run as a script (``python test_probe_checkpoint_ranks.py RANK PORT``) this file is one rank.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC

from spt_core.testing import join_ranks, run_ranks
from spt_probe import OnlineProbe

BATCHES, SAVED_AFTER = 8, 4  # windows of 3: the checkpoint holds batch 3 of the window 3-5


class Recorder(L.LightningModule):
    """A LightningModule outside a fit that keeps what the probe logs."""

    def __init__(self) -> None:
        super().__init__()
        self.logged: dict[str, torch.Tensor] = {}

    def log(self, name, value, **kwargs) -> None:
        self.logged[name] = value.detach().clone()


def make_probe(seed: int) -> OnlineProbe:
    torch.manual_seed(seed)
    return OnlineProbe(
        name="p",
        input="embedding",
        target="label",
        probe=nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Dropout(0.3), nn.Linear(6, 3)),
        optimizer={"type": "SGD", "lr": 0.1, "momentum": 0.9},
        accumulate_grad_batches=3,
        metrics=[MulticlassAccuracy(num_classes=3), MulticlassAUROC(num_classes=3)],
    )


def train_epoch_part(probe, trainer, model, batches, rank: int) -> None:
    for i in batches:
        rows = torch.Generator().manual_seed(100 * rank + i)
        features = torch.randn(5, 4, generator=rows) * (rank + 1)
        labels = torch.randint(0, 3, (5,), generator=rows)
        labels[: rank + i % 3] = -1  # each rank and batch counts other rows in the loss
        outputs = {"embedding": features, "label": labels}
        probe.on_train_batch_end(trainer, model, outputs, {"label": labels}, i)


def run_rank(rank: int, port: int) -> None:
    join_ranks(rank, port)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    straight, model = make_probe(seed=0), Recorder()
    straight.setup(trainer, model, "fit")
    straight.on_train_epoch_start(trainer, model)
    torch.manual_seed(1000 + rank)  # the dropout stream starts from another state per rank
    train_epoch_part(straight, trainer, model, range(SAVED_AFTER), rank)
    checkpoint = {"callbacks": {straight.state_key: straight.state_dict()}}
    straight.on_save_checkpoint(trainer, model, checkpoint)
    written = [copy.deepcopy(checkpoint["callbacks"][straight.state_key])]
    dist.broadcast_object_list(written, src=0)  # rank 0 writes what every rank resumes from
    train_epoch_part(straight, trainer, model, range(SAVED_AFTER, BATCHES), rank)
    straight.on_train_epoch_end(trainer, model)

    resumed, again = make_probe(seed=7), Recorder()
    resumed.setup(trainer, again, "fit")
    resumed.load_state_dict(written[0])
    resumed.on_train_epoch_start(trainer, again)
    torch.manual_seed(5)  # the global stream after a restart is another one
    train_epoch_part(resumed, trainer, again, range(SAVED_AFTER, BATCHES), rank)
    resumed.on_train_epoch_end(trainer, again)

    assert straight.optimizer_steps == resumed.optimizer_steps == 3
    for key, value in straight.module.state_dict().items():
        torch.testing.assert_close(resumed.module.state_dict()[key], value, rtol=1e-6, atol=1e-7)
    loss = model.logged["train/p_loss"]
    torch.testing.assert_close(again.logged["train/p_loss"], loss, rtol=1e-6, atol=0)
    accuracy = model.logged["train/p_accuracy"]  # over every rank's rows of the whole epoch
    assert torch.equal(again.logged["train/p_accuracy"], accuracy), (accuracy, rank)
    auroc = model.logged["train/p_auroc"]  # list states: every rank's rows, in another order
    torch.testing.assert_close(again.logged["train/p_auroc"], auroc, rtol=1e-6, atol=0)
    dist.barrier()
    dist.destroy_process_group()


def test_a_mid_epoch_checkpoint_resumes_weights_epoch_loss_and_metrics_on_every_rank():
    run_ranks(Path(__file__))


if __name__ == "__main__":
    run_rank(int(sys.argv[1]), int(sys.argv[2]))
