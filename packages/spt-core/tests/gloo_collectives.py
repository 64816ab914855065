"""Run spt_core.distributed's collectives in two real gloo processes (used by a test).

Usage: python gloo_collectives.py RANK PORT, once per rank (``spt_core.testing.run_ranks``).
Exits non-zero if any check fails.
"""

import sys

import torch
import torch.distributed as dist

from spt_core import DataChecks, distributed
from spt_core.testing import join_ranks


def check(rank: int, port: int) -> None:
    join_ranks(rank, port)
    assert distributed.is_distributed()
    assert (distributed.rank(), distributed.world_size()) == (rank, 2)

    rows = torch.arange(3 * rank, dtype=torch.float32).reshape(-1, 1) + 100 * rank
    gathered = distributed.gather_uneven(rows)
    assert gathered.tolist() == [[100.0], [101.0], [102.0]], gathered

    labels = torch.arange(rank + 1) + 10 * rank
    assert distributed.gather_uneven(labels).tolist() == [0, 10, 11]
    assert distributed.gather_uneven(labels).dtype == torch.int64

    half = torch.full((2, 2), float(rank), dtype=torch.bfloat16)
    assert distributed.gather_uneven(half).dtype == torch.bfloat16
    assert distributed.gather_uneven(half)[:, 0].tolist() == [0.0, 0.0, 1.0, 1.0]

    grads = [torch.full((2,), float(rank)), torch.full((1, 3), 2.0 * rank, dtype=torch.float64)]
    distributed.all_reduce_mean(grads)
    assert grads[0].tolist() == [0.5, 0.5] and grads[1].tolist() == [[1.0, 1.0, 1.0]]

    weights = [torch.full((2,), float(rank + 1)), torch.tensor([rank], dtype=torch.int64)]
    distributed.broadcast_(weights, src=1)
    assert weights[0].tolist() == [2.0, 2.0] and weights[1].tolist() == [1]
    same = torch.full((2, 1), float(rank), dtype=torch.float16)
    assert distributed.gather_equal(same).tolist() == [[0.0], [0.0], [1.0], [1.0]]
    assert distributed.gather_equal(same).dtype == torch.float16
    blocks = torch.tensor([10 * rank, 10 * rank + 1])  # block r goes to rank r
    assert distributed.exchange(blocks).tolist() == [rank, 10 + rank]
    assert distributed.all_reduce_max_(torch.tensor([rank, 1 - rank])).tolist() == [1, 1]

    # Rank 0 saw nothing of loader 1: the totals are still every rank's.
    checks = DataChecks()
    checks.update("val", 0, torch.ones(rank + 1, 2), torch.full((rank + 1,), 2 - rank))
    if rank == 1:
        checks.update("val", 1, torch.tensor([[float("nan")], [1.0]]), torch.tensor([4, 0]))
    assert checks.read("val", 2) == [(0, 2), (1, 4)]
    dist.destroy_process_group()


if __name__ == "__main__":
    check(int(sys.argv[1]), int(sys.argv[2]))
