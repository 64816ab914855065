"""A checkpoint written mid-window under DDP resumes exactly on every rank.

Each of two gloo processes trains the same module on its own rows, so the ranks hold different
unfinished-window gradients, BatchNorm running statistics and (seeded per rank) dropout random
streams when the checkpoint is written. The checkpoint is written through the callback's
``on_save_checkpoint``, as Lightning calls it on every rank; every rank then resumes a fresh
callback from that one checkpoint and must end where the uninterrupted run does.

Run as a script (``python test_trainable_checkpoint_ranks.py RANK PORT``) this file is one rank.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch import nn

from spt_core.testing import join_ranks, run_ranks
from spt_trainable import TrainableCallback

BATCHES, SAVED_AFTER, WINDOW = 8, 4, 3  # the checkpoint holds batch 3 of the window 3-5


def stub_trainer():
    return SimpleNamespace(
        callbacks=[],
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
        num_training_batches=BATCHES,
        callback_metrics={},
        accumulate_grad_batches=1,
        current_epoch=0,
        is_global_zero=True,
    )


def head(seed: int) -> TrainableCallback:
    torch.manual_seed(seed)
    module = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Dropout(0.3), nn.Linear(6, 1))
    return TrainableCallback(
        "head",
        module=module,
        optimizer={"type": "SGD", "lr": 0.1, "momentum": 0.9},
        accumulate_grad_batches=WINDOW,
    )


def train(callback: TrainableCallback, trainer, batches, rank: int) -> None:
    for i in batches:
        rows = torch.Generator().manual_seed(100 * rank + i)
        x = torch.randn(5, 3, generator=rows) * (rank + 1) + rank
        with callback.training_context() as module:
            loss = module(x).square().mean()
        callback.backward_and_step(loss, trainer, batch_idx=i)


def gathered(tensor):
    """Every rank's ``tensor``, in rank order."""
    slots = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(slots, tensor.contiguous())
    return slots


def run_rank(rank: int, port: int) -> None:
    join_ranks(rank, port)
    trainer, pl_module = stub_trainer(), SimpleNamespace(device=torch.device("cpu"))
    straight = head(seed=0)
    straight.setup(trainer, pl_module, "fit")
    torch.manual_seed(1000 + rank)  # the random stream starts from a different state per rank
    train(straight, trainer, range(SAVED_AFTER), rank)
    own_grads = [p.grad.clone() for p in straight.module.parameters()]
    checkpoint = {"callbacks": {straight.state_key: straight.state_dict()}}
    straight.on_save_checkpoint(trainer, pl_module, checkpoint)
    saved = copy.deepcopy(checkpoint["callbacks"][straight.state_key])
    written = [saved]  # rank 0 writes the file that every rank resumes from
    dist.broadcast_object_list(written, src=0)
    saved = written[0]
    # The live gradients are this rank's own still; the checkpoint holds their mean.
    for p, own in zip(straight.module.parameters(), own_grads, strict=True):
        assert torch.equal(p.grad, own)
    assert not torch.equal(*gathered(own_grads[0]))
    for own, grad in zip(own_grads, saved["grads"], strict=True):
        torch.testing.assert_close(grad, sum(gathered(own)) / 2, rtol=0, atol=0)
    train(straight, trainer, range(SAVED_AFTER, BATCHES), rank)
    straight.flush(trainer)
    straight.sync_buffers()

    resumed = head(seed=7)  # other weights: all of them must come from the checkpoint
    resumed.setup(trainer, pl_module, "fit")
    resumed.load_state_dict(saved)
    torch.manual_seed(5)  # the global stream after a restart is another one
    train(resumed, trainer, range(SAVED_AFTER, BATCHES), rank)
    resumed.flush(trainer)
    resumed.sync_buffers()

    assert straight.optimizer_steps == resumed.optimizer_steps == 3
    done, again = straight.module.state_dict(), resumed.module.state_dict()
    for key, value in done.items():
        torch.testing.assert_close(again[key], value, rtol=1e-6, atol=1e-7, msg=key)
        assert torch.equal(*gathered(again[key].double())), key
    dist.barrier()
    dist.destroy_process_group()


def test_a_mid_window_checkpoint_resumes_every_rank_exactly():
    run_ranks(Path(__file__))


if __name__ == "__main__":
    run_rank(int(sys.argv[1]), int(sys.argv[2]))
