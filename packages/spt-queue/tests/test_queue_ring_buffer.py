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


@pytest.mark.parametrize(
    ("capacity", "error"), [(0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)]
)
def test_bad_capacity_names_the_argument(capacity, error):
    """A value out of range is a ValueError, a value of the wrong type a TypeError."""
    with pytest.raises(error, match="capacity must be an integer >= 1"):
        RingBuffer(capacity)
    with pytest.raises(error, match="capacity must be an integer >= 1"):
        RingBuffer(3).resize(capacity)


@pytest.mark.parametrize(("n", "error"), [(-1, ValueError), (1.5, TypeError), ("2", TypeError)])
def test_bad_read_lengths_name_the_argument(n, error):
    buffer = RingBuffer(3)
    buffer.append(torch.arange(3))
    with pytest.raises(error, match="n must be an integer >= 0"):
        buffer.last(n)
    assert buffer.last(0).tolist() == [] and buffer.last(5).tolist() == [0, 1, 2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_buffer_follows_the_rows_device():
    buffer = RingBuffer(8)
    buffer.append(torch.ones(3, 2, device="cuda"))
    assert buffer.last().device.type == "cuda"


def test_an_int_shape_is_one_row_of_that_many_values():
    buffer = RingBuffer(5, shape=10, dtype=torch.float32)
    assert buffer.shape == (10,)
    assert buffer.unordered().shape == (0, 10)
    buffer.append(torch.ones(2, 10))
    assert buffer.last().shape == (2, 10)


@pytest.mark.parametrize(
    ("shape", "error"),
    [("10", TypeError), (2.5, TypeError), ((3, True), TypeError), (-1, ValueError)],
)
def test_bad_shape_names_the_argument(shape, error):
    with pytest.raises(error, match="shape"):
        RingBuffer(5, shape=shape)


ROW_SHAPES = st.sampled_from([(), (1,), (3,), (2, 2)])
DTYPES = st.sampled_from([torch.int64, torch.int32, torch.float32, torch.float16, torch.bool])


def _rows(n: int, shape: tuple[int, ...], dtype: torch.dtype, start: int) -> torch.Tensor:
    # int64 values beyond 2**24 (and 2**53) tell whether they went through a float.
    values = torch.arange(start, start + n * max(1, int(torch.tensor(shape).prod())))
    values = values.reshape(n, *shape) + (2**53 + 1 if dtype == torch.int64 else 0)
    return values.to(dtype) if dtype != torch.bool else values % 2 == 1


@settings(max_examples=100, deadline=None)
@given(
    saved_shape=ROW_SHAPES,
    saved_dtype=DTYPES,
    saved_rows=st.integers(0, 7),
    held_shape=ROW_SHAPES,
    held_dtype=DTYPES,
    held_rows=st.integers(0, 7),
    declared=st.booleans(),
    capacity=st.integers(1, 8),
)
def test_a_loaded_state_brings_its_own_row_shape_and_dtype(
    saved_shape, saved_dtype, saved_rows, held_shape, held_dtype, held_rows, declared, capacity
):
    source = RingBuffer(6)
    source.append(_rows(saved_rows, saved_shape, saved_dtype, 0))
    destination = (
        RingBuffer(capacity, shape=held_shape, dtype=held_dtype)
        if declared
        else RingBuffer(capacity)
    )
    destination.append(_rows(held_rows, held_shape, held_dtype, 100))
    destination.load_state_dict(source.state_dict())
    restored = destination.last()
    assert restored.dtype == saved_dtype
    assert restored.shape[1:] == saved_shape
    assert torch.equal(restored, source.last()[-capacity:])
    assert destination.appended == saved_rows
    destination.append(_rows(2, saved_shape, saved_dtype, 50))  # and it keeps working
    assert len(destination) == min(capacity, len(restored) + 2)


def test_a_state_saved_before_any_append_leaves_the_buffer_as_constructed():
    declared = RingBuffer(4, shape=(3,), dtype=torch.float16)
    declared.append(torch.ones(2, 3))
    declared.load_state_dict(RingBuffer(4).state_dict())
    assert (declared.shape, declared.dtype, len(declared)) == ((3,), torch.float16, 0)
    learned = RingBuffer(4)
    learned.append(torch.ones(2, 5))
    learned.load_state_dict(RingBuffer(4).state_dict())
    assert (learned.shape, learned.dtype, len(learned)) == (None, None, 0)
    learned.append(torch.arange(3))  # the next append fixes shape and dtype again
    assert learned.dtype == torch.int64 and learned.shape == ()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"dtype": "float32"}, TypeError, "dtype must be a torch.dtype or None, got 'float32'"),
        ({"device": 0.5}, TypeError, "device must be a torch.device, a str or None, got 0.5"),
        ({"device": "no-such-device"}, ValueError, "device must name a torch device"),
    ],
)
def test_dtype_and_device_are_checked_when_the_buffer_is_made(kwargs, error, match):
    """A dtype given as a string was stored as is, to fail at the first append."""
    with pytest.raises(error, match=match):
        RingBuffer(4, **kwargs)
    assert RingBuffer(4, dtype=torch.float16, device="cpu").device == torch.device("cpu")
