from pathlib import Path

import torch

from spt_core import distributed
from spt_core.testing import run_ranks


def test_single_process_fallbacks():
    assert not distributed.is_distributed()
    assert (distributed.rank(), distributed.world_size()) == (0, 1)
    rows = torch.ones(3, 2)
    assert distributed.gather_uneven(rows) is rows
    grads = [torch.ones(2)]
    distributed.all_reduce_mean(grads)
    distributed.broadcast_(grads)
    assert grads[0].tolist() == [1.0, 1.0]


def test_collectives_in_two_gloo_processes():
    run_ranks(Path(__file__).with_name("gloo_collectives.py"))


def test_single_process_gather_exchange_and_max_are_identities():
    rows = torch.arange(6.0).reshape(3, 2)
    assert distributed.gather_equal(rows) is rows
    assert distributed.exchange(rows) is rows
    flags = torch.tensor([0.0, 1.0])
    assert distributed.all_reduce_max_(flags) is flags
    assert flags.tolist() == [0.0, 1.0]
