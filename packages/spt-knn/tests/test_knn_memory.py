"""Memory of the kNN evaluation: its peak during a validation epoch, and what it still holds
once the epoch is over."""

import re
import weakref
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torchmetrics.classification import MulticlassAccuracy

from spt_core.checks import finite_rows
from spt_knn import OnlineKNN

ROWS, DIM = 8192, 128
BANK_BYTES = ROWS * DIM * 4  # 4 MiB of float32 features


class StorageTracker(TorchDispatchMode):
    """Bytes of the tensor storages created inside the block (not those of ``existing``):
    the peak, and those still alive (``now``) when the block ends."""

    def __init__(self, *existing: torch.Tensor) -> None:
        super().__init__()
        self.live = {t.untyped_storage().data_ptr(): 0 for t in existing}
        self.now = self.peak = 0

    def _free(self, pointer: int) -> None:
        self.now -= self.live.pop(pointer, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                storage = tensor.untyped_storage()
                pointer = storage.data_ptr()
                if pointer and pointer not in self.live:
                    self.live[pointer] = storage.nbytes()
                    self.now += storage.nbytes()
                    weakref.finalize(storage, self._free, pointer)
        self.peak = max(self.peak, self.now)
        return out


@pytest.fixture
def filled(tiny):
    """An OnlineKNN whose queue holds ROWS training rows (a fit without validation)."""
    features, labels = tiny.data(ROWS, DIM, 3)
    knn = OnlineKNN(
        "knn", "embedding", "label", ROWS, {"accuracy": MulticlassAccuracy(3)}, num_classes=3
    )
    model = tiny.model()
    tiny.trainer([knn]).fit(model, tiny.loader(features, labels, batch_size=1024))
    return knn, model


def test_a_validation_epoch_holds_one_copy_of_the_bank_and_releases_it(tiny, filled):
    knn, model = filled
    trainer = tiny.trainer([knn])
    val_x, val_y = tiny.data(64, DIM, 3, seed=1)
    queues = [queue.buffer.unordered() for queue in knn._queues]  # allocated by the fit
    with StorageTracker(*queues) as tracked:
        trainer.validate(model, tiny.loader(val_x, val_y))
    assert "eval/knn_accuracy" in trainer.callback_metrics
    # The snapshot (one copy of the bank) and the search's blocks (1.3 MiB); checking the
    # bank's rows for non-finite values all at once took 1.75 banks more.
    assert tracked.peak < 1.6 * BANK_BYTES
    # Nothing queue-sized outlives the evaluation (the snapshot and the bank used to stay
    # until the next one, through every training epoch).
    del trainer
    assert tracked.now < 0.1 * BANK_BYTES
    assert not knn._epochs


def _resident_peak() -> int:
    """Peak resident bytes of this process since the last `_reset_resident_peak`."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024


def _reset_resident_peak() -> int:
    """Start a new peak (Linux: writing 5 to clear_refs); the resident bytes now."""
    Path("/proc/self/clear_refs").write_text("5")
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024


def _can_measure_resident_peak() -> bool:
    try:
        _reset_resident_peak()
        return _resident_peak() > 0
    except (OSError, AttributeError):
        return False


@pytest.mark.skipif(not _can_measure_resident_peak(), reason="needs Linux /proc/self/clear_refs")
def test_the_resident_peak_of_a_validation_epoch_is_about_one_bank(tiny):
    """What the process really touches, temporaries inside torch kernels included: a 64 MiB
    bank (large blocks come from, and go back to, the system) costs about one copy, the
    snapshot; the whole-bank finiteness check alone took 1.8 more."""
    rows, dim = 65536, 256
    bank_bytes = rows * dim * 4
    features, labels = tiny.data(rows, dim, 3)
    knn = OnlineKNN(
        "knn", "embedding", "label", rows, {"accuracy": MulticlassAccuracy(3)}, num_classes=3
    )
    model = tiny.model()
    tiny.trainer([knn]).fit(model, tiny.loader(features, labels, batch_size=8192))
    del features
    val_x, val_y = tiny.data(64, dim, 3, seed=1)
    trainer = tiny.trainer([knn])
    before = _reset_resident_peak()
    trainer.validate(model, tiny.loader(val_x, val_y), verbose=False)
    assert "eval/knn_accuracy" in trainer.callback_metrics
    assert _resident_peak() - before < 1.4 * bank_bytes


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(0, 40),
    dim=st.integers(0, 70),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
    data=st.data(),
)
def test_finite_rows_equals_the_elementwise_check(rows, dim, dtype, data):
    features = torch.randn(rows, dim, generator=torch.Generator().manual_seed(rows * dim))
    cells = st.tuples(st.integers(0, max(rows - 1, 0)), st.integers(0, max(dim - 1, 0)))
    values = st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e30])
    if rows and dim:
        for (i, j), value in data.draw(st.lists(st.tuples(cells, values), max_size=6)):
            features[i, j] = value
    features = features.to(dtype)
    assert torch.equal(finite_rows(features), torch.isfinite(features).all(dim=1))


def test_finite_rows_allocates_two_values_per_row():
    features = torch.randn(ROWS, DIM)
    features[3, 0], features[4000, 5], features[-1, -1] = float("nan"), float("inf"), -1e38
    with StorageTracker() as tracked:
        finite = finite_rows(features)
    assert finite.sum() == ROWS - 2
    assert tracked.peak <= 24 * ROWS  # a few values per row; the whole-bank check: 1.75 banks
