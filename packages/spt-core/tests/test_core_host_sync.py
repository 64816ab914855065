"""forbid_host_sync: which operations make the host wait for a device, checked on CPU."""

import pytest
import torch

from spt_core.testing import HostSyncError, forbid_host_sync

X = torch.tensor([1.0, -2.0, 3.0])
SYNCING = {
    "item": lambda: X.sum().item(),
    "bool": lambda: bool(X.any()),
    "float": lambda: float(X[0]),
    "nonzero": lambda: X.nonzero(),
    "mask indexing": lambda: X[X > 0],
    "mask assignment": lambda: X.clone().__setitem__(X > 0, 0.0),
    "masked_select": lambda: X.masked_select(X > 0),
    "unique": lambda: X.unique(),
    "bincount": lambda: torch.tensor([0, 2]).bincount(),
    "repeat_interleave by tensor": lambda: X.repeat_interleave(torch.tensor([1, 2, 1])),
    "equal": lambda: torch.equal(X, X),
    "allclose": lambda: torch.allclose(X, X),
    "linalg error check": lambda: torch.linalg.inv(torch.eye(2)),
    "histc": lambda: X.histc(),
    "uint8 mask indexing": lambda: X[torch.tensor([1, 0, 1], dtype=torch.uint8)],
    "tolist": lambda: X.tolist(),
    "numpy": lambda: X.numpy(),
    "cpu": lambda: X.cpu(),
}
QUIET = {
    "topk and sort": lambda: (X.topk(2), X.sort()),
    "integer indexing": lambda: X[torch.tensor([2, 0])],
    "where": lambda: torch.where(X > 0, X, 0.0),
    "repeat_interleave by int": lambda: X.repeat_interleave(2),
    "repeat_interleave with output_size": lambda: X.repeat_interleave(
        torch.tensor([1, 2, 1]), output_size=4
    ),
    "matmul and reductions": lambda: (X @ X, X.amax(), X.cumsum(0)),
}


@pytest.mark.parametrize("operation", SYNCING.values(), ids=SYNCING.keys())
def test_operations_that_wait_for_the_device_are_refused(operation):
    with pytest.raises(HostSyncError, match="waits for the device"), forbid_host_sync():
        operation()
    assert X.tolist() == [1.0, -2.0, 3.0]  # the methods are restored


@pytest.mark.parametrize("operation", QUIET.values(), ids=QUIET.keys())
def test_operations_that_queue_on_the_device_pass(operation):
    with forbid_host_sync():
        operation()


def test_the_check_ends_with_the_block():
    with forbid_host_sync():
        pass
    assert X.sum().item() == 2.0
