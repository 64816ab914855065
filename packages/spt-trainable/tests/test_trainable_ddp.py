"""TrainableCallback's collectives: every rank issues the same ones in the same order.

Two kinds of checks. In one process, the collectives a callback issues are recorded (the
process group is faked) and compared with the order the module's structure dictates: a
loop over a ``set`` of dtypes gives one fixed order for two modules whose dtypes come in
opposite orders, so it fails one of them. In two real gloo processes, started with
different ``PYTHONHASHSEED`` values (and so with differently laid out heaps: a ``set`` of
dtypes iterates in a different order in each with good probability), the callback's start,
buffer averaging and end-of-epoch flush must agree; the launch is repeated with several seeds.

Run as a script (``python test_trainable_ddp.py RANK PORT``) this file is one rank.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from torch import nn

from spt_core import distributed
from spt_core.testing import join_ranks, run_ranks
from spt_trainable import TrainableCallback

# One tensor of each dtype; the dtypes of parameters and buffers come in the order given.
DTYPES = (torch.float32, torch.float64, torch.int64, torch.int32, torch.float16, torch.bool)


class Tensors(nn.Module):
    """Buffers of the given dtypes, in that order, after optional float parameters."""

    def __init__(self, buffer_dtypes, parameter_dtypes=(), seed=0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        for i, dtype in enumerate(parameter_dtypes):
            values = torch.randn(3, generator=generator).to(dtype)
            self.register_parameter(f"p{i}", nn.Parameter(values))
        for i, dtype in enumerate(buffer_dtypes):
            values = torch.randint(0, 50, (2, 2), generator=generator) * (seed + 1)
            self.register_buffer(f"b{i}", values.to(dtype))


def stub_trainer():
    return SimpleNamespace(
        callbacks=[],
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
        num_training_batches=4,
        callback_metrics={},
        accumulate_grad_batches=1,
        current_epoch=0,
        is_global_zero=True,
    )


def stub_module():
    return SimpleNamespace(device=torch.device("cpu"))


# ----------------------------------------------------------------------------- one process


@pytest.fixture
def recorded(monkeypatch):
    """Fake a two-rank gloo group; record each collective as ``(kind, dtype, numel)``."""
    calls = []

    def record(kind):
        def collective(tensor, *args, **kwargs):
            calls.append((kind, tensor.dtype, tensor.numel()))

        return collective

    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda *args: "gloo")
    monkeypatch.setattr(dist, "get_world_size", lambda *args: 2)
    monkeypatch.setattr(dist, "broadcast", record("broadcast"))
    monkeypatch.setattr(dist, "all_reduce", record("all_reduce"))
    return calls


def _dtype_order(tensors):
    """The dtypes in order of first appearance, as they travel (fp16 as fp32, bool as bytes)."""
    return [distributed._wire_dtype(d) for d in dict.fromkeys(t.dtype for t in tensors)]


@pytest.mark.parametrize(
    ("buffers", "parameters"),
    [
        ((torch.int64,), (torch.float32,)),
        ((torch.int64, torch.float32), ()),
        ((torch.int32, torch.float64), ()),
        ((torch.float64, torch.int32), ()),
        ((torch.bool, torch.float16, torch.int64), (torch.float32,)),
        ((torch.float16, torch.int64, torch.bool), (torch.float32,)),
        (DTYPES, ()),
        (tuple(reversed(DTYPES)), ()),
    ],
)
def test_the_start_broadcasts_one_dtype_at_a_time_in_the_modules_order(
    recorded, buffers, parameters
):
    module = Tensors(buffers, parameters)
    TrainableCallback("head", module=module).setup(stub_trainer(), stub_module(), "validate")
    tensors = [*module.parameters(), *module.buffers()]
    assert [kind for kind, _, _ in recorded] == ["broadcast"] * len(_dtype_order(tensors))
    assert [dtype for _, dtype, _ in recorded] == _dtype_order(tensors)
    assert sum(n for _, _, n in recorded) == sum(t.numel() for t in tensors)


def test_buffers_are_averaged_or_broadcast_in_the_modules_order(recorded):
    head = TrainableCallback("head", module=Tensors((torch.int64, torch.float64, torch.float32)))
    head.setup(stub_trainer(), stub_module(), "validate")
    recorded.clear()
    head.on_validation_start(stub_trainer(), stub_module())
    assert [(kind, dtype) for kind, dtype, _ in recorded] == [
        ("all_reduce", torch.float64),
        ("all_reduce", torch.float32),
        ("broadcast", torch.int64),
    ]


def test_gradients_are_averaged_one_dtype_at_a_time(recorded):
    grads = [torch.full((2,), 0.1, dtype=torch.float64), torch.ones(3), torch.ones(1).double()]
    distributed.all_reduce_mean(grads)
    assert [(kind, dtype, n) for kind, dtype, n in recorded] == [
        ("all_reduce", torch.float64, 3),
        ("all_reduce", torch.float32, 3),
    ]
    assert grads[0].dtype == torch.float64 and grads[0][0].item() == 0.1 / 2  # fake sum: self


def test_no_value_travels_through_another_dtype(recorded):
    counter = torch.tensor([2**40 + 1])
    distributed.broadcast_([torch.zeros(2), counter, torch.ones(1, dtype=torch.bool)])
    assert [dtype for _, dtype, _ in recorded] == [torch.float32, torch.int64, torch.uint8]
    assert counter.item() == 2**40 + 1  # through float32 it would be 2**40


def test_means_of_integer_tensors_are_refused():
    with pytest.raises(TypeError, match=r"floating-point tensors, got torch\.int64"):
        distributed.all_reduce_mean([torch.ones(2), torch.ones(2, dtype=torch.int64)])


# ----------------------------------------------------------------------------- two processes


def _gather(tensor):
    slots = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(slots, tensor.contiguous())
    return slots


def _as_float(tensor):
    return tensor.double() if tensor.dtype != torch.bool else tensor.to(torch.uint8).double()


def run_rank(rank: int, port: int) -> None:
    join_ranks(rank, port)
    trainer, pl_module = stub_trainer(), stub_module()

    # Start: every parameter and buffer, of six dtypes, is rank 0's on both ranks.
    module = Tensors(DTYPES, (torch.float32, torch.float64), seed=rank)
    reference = Tensors(DTYPES, (torch.float32, torch.float64), seed=0)
    head = TrainableCallback(
        "head", module=module, optimizer={"type": "SGD", "lr": 0.5}, accumulate_grad_batches=2
    )
    head.setup(trainer, pl_module, "fit")
    for key, value in reference.state_dict().items():
        assert torch.equal(module.state_dict()[key], value), key

    # Buffers drift apart in training; a validation start averages the floating ones and
    # gives every rank rank 0's others.
    with torch.no_grad():
        for buffer in module.buffers():
            buffer.copy_(torch.full_like(buffer, rank + 1))
    head.on_validation_start(trainer, pl_module)
    for buffer in module.buffers():
        expected = 1.5 if buffer.is_floating_point() else 1
        assert torch.equal(buffer, torch.full_like(buffer, expected)), buffer.dtype
        first, second = _gather(_as_float(buffer))
        assert torch.equal(first, second)

    # The epoch's last window: only rank 0 holds one; both ranks step on the average.
    if rank == 0:
        with head.training_context() as trained:
            loss = sum(p.float().square().sum() for p in trained.parameters())
        assert not head.backward_and_step(loss, trainer, batch_idx=None)
    head.on_train_epoch_end(trainer, pl_module)
    assert head.optimizer_steps == 1
    for p in module.parameters():
        first, second = _gather(p.detach())
        assert torch.equal(first, second)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("seeds", [(0, 1), (2, 3), (4, 5), (6, 7)])
def test_two_ranks_started_with_different_hash_seeds_agree(seeds):
    run_ranks(Path(__file__), env=[{"PYTHONHASHSEED": str(seed)} for seed in seeds])


if __name__ == "__main__":
    run_rank(int(sys.argv[1]), int(sys.argv[2]))
