"""LatentViz whitens each training row once per scaling, not at every update."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.overrides import TorchFunctionMode

from spt_latentviz import LatentViz, projection_mlp, trustworthiness
from spt_latentviz._whitening import BLOCK_ROWS, WhitenedRows, whiten, whiten_in_blocks
from spt_queue import RingBuffer

DIM = 64  # differs from every queue length below: a (DIM, DIM) operand is the whitening's


class CountWhitenedRows(TorchFunctionMode):
    """Counts the rows multiplied by a ``(DIM, DIM)`` matrix (the whitening's transform)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        matmuls = (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm)
        if func in matmuls and tuple(args[1].shape) == (DIM, DIM):
            self.rows += args[0].shape[0]
        return func(*args, **(kwargs or {}))


class CountingViz(LatentViz):
    """Per update: the rows whitened, whether the scaling is new since the last update, the
    graph's append count and its rows; per map: the rows whitened and the rows drawn."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.updates: list[tuple[int, bool, int, int]] = []
        self.refines: list[tuple[int, int]] = []
        self.seen_scaling = None

    def update_projection(self, trainer, pl_module):
        with CountWhitenedRows() as counter:
            loss = super().update_projection(trainer, pl_module)
        if loss is not None:
            built_at, rows, _ = self._graph
            new_scaling = self._scaling is not self.seen_scaling
            self.updates.append((counter.rows, new_scaling, built_at, len(rows)))
            self.seen_scaling = self._scaling
        return loss

    def refine_map(self, rows, seed):
        with CountWhitenedRows() as counter:
            steps = super().refine_map(rows, seed)
        self.refines.append((counter.rows, len(rows)))
        return steps


def make_viz(cls=LatentViz, **overrides) -> LatentViz:
    settings = {
        "name": "viz",
        "input": "embedding",
        "target": "label",
        "projection": projection_mlp(DIM, 32),
        "queue_length": 300,
        "update_interval": 1,
        "plot_interval": 10,
    }
    settings.update(overrides)
    return cls(**settings)


def blocks_spanned(start: int, end: int) -> int:
    """The blocks of :data:`BLOCK_ROWS` stream positions that ``[start, end)`` touches."""
    return math.ceil(end / BLOCK_ROWS) - start // BLOCK_ROWS if end > start else 0


def test_an_update_whitens_only_the_rows_appended_since_the_graph_was_read(run_fit, blobs):
    features, labels = blobs(400, DIM, 4)
    torch.manual_seed(0)
    viz = make_viz(CountingViz)
    run_fit([viz], features, labels, epochs=2, batch_size=10)
    updates = viz.updates
    assert len(updates) > 60
    last_built = None
    rebuilt = unchanged = 0
    for counted, new_scaling, built_at, rows in updates:
        if new_scaling:
            # The first update and the first after a map: every row, in whole blocks.
            assert counted <= BLOCK_ROWS * blocks_spanned(built_at - rows, built_at)
        elif built_at == last_built:
            unchanged += 1
            assert counted == 0  # the same rows, the same scaling: nothing to whiten
        else:
            rebuilt += 1
            assert counted <= BLOCK_ROWS * blocks_spanned(last_built, built_at)
        last_built = built_at
    assert rebuilt > 10 and unchanged > 30
    total = sum(counted for counted, *_ in updates)
    assert total < 0.2 * sum(rows for *_, rows in updates)


def test_a_map_whitens_the_drawn_rows_once_per_scaling(run_fit, blobs):
    features, labels = blobs(400, DIM, 4)
    torch.manual_seed(0)
    viz = make_viz(CountingViz)
    run_fit([viz], features, labels, epochs=2, batch_size=40)
    (first, rows), (second, again) = viz.refines
    assert first == rows  # the new scaling's rows; the first map has no previous frame
    assert second == 2 * again  # the previous frame's scaling, then the new one


def test_a_new_frame_or_a_loaded_state_whitens_the_training_rows_afresh(run_fit, blobs):
    features, labels = blobs(400, DIM, 4)
    torch.manual_seed(0)
    viz = make_viz()
    run_fit([viz], features, labels, epochs=1, batch_size=40)
    torch.manual_seed(1)
    other = make_viz()
    run_fit([other], features * 3 + 1, labels, epochs=1, batch_size=40)
    built_at, rows, _ = viz._graph
    start = built_at - len(rows)
    before = viz._whiten(rows)
    viz.refine_map(features[:200] * 2, seed=3)
    after = viz._whiten(rows)
    assert torch.equal(after, whiten_in_blocks(rows, viz._scaling, start))
    assert not torch.allclose(after, before, atol=0.1)
    assert set(other.state_dict()["latent_viz"]) == {
        *("train_batches", "last_plot_epoch", "generators", "loss_total"),
        *("scaling", "alignment", "frame_module"),
    }  # no whitened rows
    viz.load_state_dict(other.state_dict())
    loaded = viz._whiten(rows)
    assert torch.equal(loaded, whiten_in_blocks(rows, other._scaling))  # rows read again
    assert not torch.allclose(loaded, after, atol=0.1)


def test_the_map_with_reused_whitening_is_the_map_whitened_at_every_update(run_fit, blobs):
    features, labels = blobs(400, DIM, 4)
    runs = []
    for reuse in (True, False):
        torch.manual_seed(0)
        viz = make_viz(queue_length=200, plot_interval=1)
        viz.reuse_whitening = reuse
        run_fit([viz], features, labels, epochs=2, batch_size=10)
        runs.append(viz)
    reused, every_update = runs
    assert reused.optimizer_steps == every_update.optimizer_steps > 60
    z, z_every_update = reused.project(features), every_update.project(features)
    k = reused.k_neighbors
    assert trustworthiness(features, z, k) == pytest.approx(
        trustworthiness(features, z_every_update, k).item(), abs=0.02
    )
    # Where a product of 64 rows rounds each row as the queue's whole product does (MKL on
    # x86 does), the two runs are the same bit for bit; elsewhere they part by rounding.
    probe = torch.randn(200, DIM), (torch.randn(DIM), torch.randn(DIM, DIM))
    if torch.equal(whiten_in_blocks(*probe), whiten(*probe)):
        assert torch.equal(z, z_every_update)


def test_a_run_resumed_between_maps_continues_exactly(run_fit, blobs, tmp_path):
    """The straight run reuses the rows it whitened before the checkpoint; the resumed one
    whitens them afresh: bit for bit the same. Three new rows per update (a product of so few
    rows rounds differently on some BLAS) and a graph rebuilt at every update."""
    features, labels = blobs(90, DIM, 3)

    def fresh() -> LatentViz:
        torch.manual_seed(0)
        return make_viz(queue_length=30, k_neighbors=5)  # maps at epochs 0 and 2 (the last)

    straight = fresh()
    saver = ModelCheckpoint(
        dirpath=tmp_path / "checkpoints",
        filename="{epoch}",
        save_top_k=-1,
        every_n_epochs=1,
        save_on_train_epoch_end=True,
    )
    run = {"batch_size": 3, "epochs": 3, "validate": False}
    run_fit([straight, saver], features, labels, enable_checkpointing=True, **run)
    resumed = fresh()
    checkpoint = str(tmp_path / "checkpoints" / "epoch=1.ckpt")
    run_fit([resumed], features, labels, root=tmp_path / "resumed", ckpt_path=checkpoint, **run)
    assert resumed.optimizer_steps == straight.optimizer_steps
    for key, value in straight.projection.state_dict().items():
        assert torch.equal(resumed.projection.state_dict()[key], value), key
    assert torch.equal(resumed.project(features), straight.project(features))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 300),
    dim=st.integers(1, 100),
    start=st.integers(0, 500),
    cuts=st.lists(st.integers(0, 300), max_size=4),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_a_row_whitened_in_blocks_is_the_same_whatever_is_whitened_with_it(
    n, dim, start, cuts, dtype, seed
):
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(n, dim, generator=generator, dtype=dtype)
    scaling = (torch.randn(dim, generator=generator), torch.randn(dim, dim, generator=generator))
    together = whiten_in_blocks(rows, scaling, start)
    bounds = [0, *sorted(min(c, n) for c in cuts), n]
    pieces = [whiten_in_blocks(rows[a:b], scaling, start + a) for a, b in pairwise(bounds)]
    assert torch.equal(torch.cat(pieces), together)
    tolerance = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(together, whiten(rows, scaling), rtol=tolerance, atol=tolerance)


def test_rows_read_a_few_at_a_time_are_whitened_as_if_together():
    generator = torch.Generator().manual_seed(0)
    queue, cache = RingBuffer(150, shape=DIM), WhitenedRows()
    scaling = (torch.randn(DIM, generator=generator), torch.randn(DIM, DIM, generator=generator))
    # Few new rows (a product of 1 to 3 rows rounds differently on some BLAS), more rows than
    # the queue holds, then a longer read than the last (it starts earlier in the stream).
    for appended, newest in [(70, 150), (1, 150), (2, 150), (3, 150), (200, 150), (1, 5), (1, 50)]:
        queue.append(torch.randn(appended, DIM, generator=generator))
        rows = queue.last(newest)
        start = queue.appended - len(rows)
        cache.place(rows, queue, start)
        assert torch.equal(cache.whiten(rows, scaling), whiten_in_blocks(rows, scaling, start))


def test_rows_read_in_another_dtype_are_whitened_afresh_in_that_dtype():
    generator = torch.Generator().manual_seed(0)
    queue, cache = RingBuffer(100, shape=DIM), WhitenedRows()
    scaling = (torch.randn(DIM, generator=generator), torch.randn(DIM, DIM, generator=generator))
    queue.append(torch.randn(80, DIM, generator=generator))
    cache.place(rows := queue.last(100), queue, 0)
    cache.whiten(rows, scaling)
    queue.append(torch.randn(10, DIM, generator=generator))
    for dtype in (torch.float64, torch.bfloat16):  # e.g. a projection cast to another dtype
        rows = queue.last(100).to(dtype)
        cache.place(rows, queue, 0)
        white = cache.whiten(rows, scaling)
        assert white.dtype == dtype and torch.equal(white, whiten_in_blocks(rows, scaling))


OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 150) | st.integers(1, 3)),
        # (the newest rows to read, whether one is left out)
        st.tuples(st.just("read"), st.tuples(st.integers(0, 200), st.booleans())),
        st.tuples(st.just("again"), st.just(0)),
        st.tuples(st.just("scaling"), st.floats(0.5, 2.0)),
        st.tuples(st.just("other queue"), st.just(0)),
    ),
    min_size=3,
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(
    operations=OPERATIONS,
    capacity=st.integers(1, 200),
    dim=st.sampled_from([3, 64]),
    seed=st.integers(0, 2**16),
)
def test_the_cache_equals_a_fresh_whitening_over_appends_reads_and_new_scalings(
    operations, capacity, dim, seed
):
    generator = torch.Generator().manual_seed(seed)
    queues = [RingBuffer(capacity, shape=dim), RingBuffer(capacity, shape=dim)]
    queue = queues[0]
    cache = WhitenedRows()
    scaling = (torch.randn(dim, generator=generator), torch.randn(dim, dim, generator=generator))
    rows, start = None, None
    for operation, value in operations:
        if operation == "append":
            for q in queues:  # the same positions, different rows
                q.append(torch.randn(value, dim, generator=generator))
        elif operation == "scaling":
            scaling = (torch.randn(dim, generator=generator), torch.randn(dim, dim) * value)
        elif operation == "other queue":
            queue = queues[1] if queue is queues[0] else queues[0]
        elif operation == "read":
            newest, leave_one_out = value
            rows = queue.last(newest)
            start = queue.appended - len(rows)
            if leave_one_out and len(rows):
                rows, start = rows[1:], None  # like rows with non-finite values left out
            cache.place(rows, queue, start)
        if rows is None or operation not in ("read", "again", "scaling"):
            continue
        white = cache.whiten(rows, scaling)
        assert torch.equal(white, whiten_in_blocks(rows, scaling, start or 0))
