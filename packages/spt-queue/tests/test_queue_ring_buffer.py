import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spt_queue import RingBuffer

batches = st.lists(st.integers(min_value=0, max_value=12), min_size=1, max_size=20)


@settings(max_examples=150, deadline=None)
@given(capacity=st.integers(1, 10), sizes=batches, n=st.integers(0, 12))
def test_appends_match_a_list_model(capacity, sizes, n):
    buffer = RingBuffer(capacity)
    model: list[int] = []
    counter = 0
    for size in sizes:
        rows = torch.arange(counter, counter + size)
        counter += size
        buffer.append(rows)
        model.extend(rows.tolist())
        model = model[-capacity:]
        assert len(buffer) == len(model)
        assert buffer.last().tolist() == model
    assert buffer.appended == counter
    assert buffer.last(n).tolist() == (model[-n:] if n else [])
    assert sorted(buffer.unordered().tolist()) == sorted(model)


@settings(max_examples=60, deadline=None)
@given(capacity=st.integers(1, 8), sizes=batches, new_capacity=st.integers(1, 12))
def test_resize_and_state_round_trip_keep_the_newest_rows(capacity, sizes, new_capacity):
    buffer = RingBuffer(capacity, shape=(2,), dtype=torch.float32)
    model: list[list[float]] = []
    for i, size in enumerate(sizes):
        rows = torch.full((size, 2), float(i)) + torch.arange(size).unsqueeze(1)
        buffer.append(rows)
        model = (model + rows.tolist())[-capacity:]
    restored = RingBuffer(new_capacity)
    restored.load_state_dict(buffer.state_dict())
    assert restored.last().tolist() == model[-new_capacity:]
    assert restored.appended == buffer.appended
    buffer.resize(new_capacity)
    assert buffer.last().tolist() == model[-new_capacity:]


def test_first_append_fixes_shape_and_dtype():
    labels = RingBuffer(4)
    labels.append(torch.tensor([1, 2]))
    assert labels.dtype == torch.int64
    assert labels.shape == ()
    features = RingBuffer(4)
    features.append(torch.ones(3, 5, dtype=torch.bfloat16))
    assert features.dtype == torch.bfloat16
    assert features.last().dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"rows of shape \(6,\)"):
        features.append(torch.ones(1, 6, dtype=torch.bfloat16))


def test_given_dtype_casts_rows_and_storage_is_preallocated():
    buffer = RingBuffer(3, shape=(2,), dtype=torch.float16)
    storage = buffer.unordered().untyped_storage().data_ptr()
    buffer.append(torch.ones(5, 2, dtype=torch.float32))
    assert buffer.last().dtype == torch.float16
    assert buffer.unordered().untyped_storage().data_ptr() == storage


def test_last_is_a_copy_and_empty_buffer_reads_empty():
    buffer = RingBuffer(2)
    assert buffer.last().numel() == 0
    buffer.append(torch.tensor([1.0, 2.0]))
    snapshot = buffer.last()
    buffer.append(torch.tensor([3.0]))
    assert snapshot.tolist() == [1.0, 2.0]


@pytest.mark.parametrize("capacity", [0, -1, 1.5, True])
def test_bad_capacity_names_the_argument(capacity):
    with pytest.raises(ValueError, match="capacity"):
        RingBuffer(capacity)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_buffer_follows_the_rows_device():
    buffer = RingBuffer(8)
    buffer.append(torch.ones(3, 2, device="cuda"))
    assert buffer.last().device.type == "cuda"
