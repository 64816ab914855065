"""Merging per-shard candidates reproduces one search over the whole bank, ties included."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spt_knn import (
    RoundShape,
    agree_on_rounds,
    knn_bank,
    knn_neighbours,
    merge_candidates,
    sharded_neighbours,
)
from spt_knn.search import pad_candidates

METRICS = ("euclidean", "squared_euclidean", "cosine", "manhattan")


def _shard_search(queries, bank, labels, sizes, k, metric):
    """Search every shard, then merge the candidates as the ranks of shard mode do."""
    candidates = [
        pad_candidates(*knn_neighbours(queries, shard, shard_labels, k, metric), k)
        for shard, shard_labels in zip(bank.split(sizes), labels.split(sizes), strict=True)
    ]
    return merge_candidates(
        torch.cat([d for d, _ in candidates], dim=1),
        torch.cat([y for _, y in candidates], dim=1),
        k,
    )


@settings(max_examples=80, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 9), min_size=1, max_size=5),
    dim=st.integers(1, 3),
    k=st.integers(1, 10),
    seed=st.integers(0, 2**16),
)
def test_exact_ties_across_shards_go_to_the_lower_global_row(sizes, dim, k, seed):
    """Small integer rows under manhattan, whose search scores are exact: many rows at equal
    distances, in different shards, with different labels."""
    generator = torch.Generator().manual_seed(seed)
    total = sum(sizes)
    bank = torch.randint(-2, 3, (total, dim), generator=generator).float()
    queries = torch.randint(-2, 3, (6, dim), generator=generator).float()
    labels = torch.randperm(total, generator=generator)  # a label identifies its row
    k = min(k, total)
    whole = pad_candidates(*knn_neighbours(queries, bank, labels, k, "manhattan"), k)
    merged = _shard_search(queries, bank, labels, sizes, k, "manhattan")
    assert torch.equal(merged[1], whole[1])
    assert torch.equal(merged[0], whole[0])


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=4),
    k=st.integers(1, 12),
    metric=st.sampled_from(METRICS),
    seed=st.integers(0, 2**16),
)
def test_merged_shard_candidates_equal_the_search_of_the_concatenated_bank(sizes, k, metric, seed):
    """Continuous features: the shards' products round differently from the whole bank's,
    yet neighbours, their order and their distances are identical."""
    generator = torch.Generator().manual_seed(seed)
    total = sum(sizes)
    bank = torch.randn(total, 8, generator=generator)
    queries = torch.randn(5, 8, generator=generator)
    labels = torch.arange(total)
    k = min(k, total)
    whole = pad_candidates(*knn_neighbours(queries, bank, labels, k, metric), k)
    merged = _shard_search(queries, bank, labels, sizes, k, metric)
    assert torch.equal(merged[1], whole[1])
    assert torch.equal(merged[0], whole[0])


def test_without_a_process_group_the_sharded_search_is_the_local_search():
    generator = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(12, 4, generator=generator), torch.randn(3, 4, generator=generator)
    labels = torch.arange(12)
    local = knn_neighbours(queries, bank, labels, 5)
    sharded = sharded_neighbours(queries, bank, labels, k=5, rows=3)
    assert torch.equal(sharded[0], local[0])
    assert torch.equal(sharded[1], local[1])
    padded = sharded_neighbours(queries, bank[:2], labels[:2], k=4, rows=3)
    assert padded[1][:, 2:].eq(-1).all()
    assert padded[0][:, 2:].isinf().all()


def test_rounds_cut_each_ranks_queries_and_without_a_process_group_search_locally():
    generator = torch.Generator().manual_seed(1)
    bank, queries = torch.randn(12, 4, generator=generator), torch.randn(5, 4, generator=generator)
    labels = torch.arange(12)
    shape = agree_on_rounds(queries, 2, bank.device)
    assert shape == RoundShape(queries=5, rows=2, dim=4, dtype=torch.float32)
    parts = shape.parts(queries, bank.device)
    assert [len(p) for p in parts] == [2, 2, 1]
    rounds = [sharded_neighbours(p, bank, labels, 3, shape.rows) for p in parts]
    local = knn_neighbours(queries, bank, labels, 3)
    assert torch.equal(torch.cat([d for d, _ in rounds]), local[0])
    assert torch.equal(torch.cat([y for _, y in rounds]), local[1])
    # A rank without queries sends empty parts of the agreed width and dtype, one per round.
    wider = RoundShape(queries=5, rows=2, dim=4, dtype=torch.float64)
    assert [p.shape for p in wider.parts(None, bank.device)] == [(0, 4)] * 3
    assert all(p.dtype == torch.float64 for p in wider.parts(queries, bank.device))


@settings(max_examples=80, deadline=None)
@given(
    total=st.integers(1, 30),
    shards=st.integers(1, 4),
    batch=st.integers(1, 5),
    k=st.integers(1, 10),
    seed=st.integers(0, 2**16),
)
def test_keyed_merge_breaks_ties_in_the_whole_banks_order(total, shards, batch, k, seed):
    """Shards that hold batches ``r, r + S, ...`` of the bank (a clean loader under DDP):
    with each row's position as its key, the merge equals one search over the whole bank."""
    generator = torch.Generator().manual_seed(seed)
    bank = torch.randint(-2, 3, (total, 2), generator=generator).float()
    queries = torch.randint(-2, 3, (6, 2), generator=generator).float()
    labels = torch.randperm(total, generator=generator)
    k = min(k, total)
    positions = torch.arange(total)
    owner = (positions // batch) % shards
    candidates, keys = [], []
    for shard in range(shards):
        rows = positions[owner == shard]
        which = pad_candidates(*knn_neighbours(queries, bank[rows], torch.arange(len(rows)), k,
                                               "manhattan"), k)  # fmt: skip
        candidates.append((which[0], torch.cat((labels[rows], torch.tensor([-1])))[which[1]]))
        keys.append(torch.cat((rows, torch.tensor([0])))[which[1]])
    merged = merge_candidates(
        torch.cat([d for d, _ in candidates], dim=1),
        torch.cat([y for _, y in candidates], dim=1),
        k,
        torch.cat(keys, dim=1),
    )
    whole = pad_candidates(*knn_neighbours(queries, bank, labels, k, "manhattan"), k)
    assert torch.equal(merged[1], whole[1])
    assert torch.equal(merged[0], whole[0])


def test_a_sharded_bank_keeps_the_keys_of_its_voting_rows():
    rows = torch.tensor([[0.0], [1.0], [float("nan")], [3.0]])
    bank = knn_bank(
        rows, torch.tensor([1, -1, 0, 2]), sharded=True, keys=torch.tensor([7, 3, 5, 1])
    )
    assert bank.keys.tolist() == [7, 1]
    assert knn_bank(rows, torch.tensor([1, -1, 0, 2]), keys=torch.tensor([7, 3, 5, 1])).keys is None
