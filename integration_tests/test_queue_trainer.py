"""OnlineQueue inside real Trainers: fill, checkpoint + resume, a reader gathering under DDP."""

import torch


def test_queue_holds_the_last_training_rows_of_an_epoch(run_scenario):
    (result,) = run_scenario("queue_fill", n=60, batch_size=7, queue_length=20, shuffle=True)
    seen = torch.cat(result["seen"])
    assert result["rows"].tolist() == seen[-20:].tolist()
    assert result["snapshot"].tolist() == seen[-20:].tolist()
    # A passive store: its buffer and who reads it, no copy of the rows and no gather flag.
    assert "buffer" in result["queue_state"]
    assert not [name for name in result["queue_state"] if "snapshot" in name or "gather" in name]
    assert result["embeddings"].shape == (20, 8)
    assert result["appended"] == 60


def test_checkpoint_and_resume_round_trip_the_rows(run_scenario, tmp_path):
    (straight,) = run_scenario("queue_fill", epochs=2, queue_length=20)
    ckpt = str(tmp_path / "epoch1.ckpt")
    run_scenario("queue_fill", epochs=1, queue_length=20, save=ckpt)
    (resumed,) = run_scenario("queue_fill", epochs=2, queue_length=20, resume=ckpt)
    assert resumed["rows"].tolist() == straight["rows"].tolist()
    assert torch.equal(resumed["embeddings"], straight["embeddings"])
    assert resumed["appended"] == straight["appended"] == 128


def test_ddp_reader_gathers_every_ranks_rows_once(run_scenario):
    ranks = run_scenario("queue_fill", devices=2, n=64, batch_size=4, queue_length=12)
    own_rows = [torch.cat(result["seen"])[-12:].tolist() for result in ranks]
    for result, rows in zip(ranks, own_rows, strict=True):
        assert result["rows"].tolist() == rows
        assert result["appended"] == 32
    assert set(own_rows[0]).isdisjoint(own_rows[1])
    for result in ranks:
        assert result["snapshot"].tolist() == own_rows[0] + own_rows[1]


def test_ddp_checkpoint_restores_each_ranks_rows_without_duplicates(run_scenario, tmp_path):
    ckpt = str(tmp_path / "ddp.ckpt")
    run_scenario("queue_fill", devices=2, n=64, batch_size=4, queue_length=12, save=ckpt)
    (first, second) = run_scenario(
        "queue_fill", devices=2, n=64, batch_size=4, queue_length=12, save=ckpt
    )
    state = torch.load(ckpt, weights_only=False)["callbacks"]["OnlineQueue[name=index]"]
    assert state["rows"].tolist() == first["rows"].tolist() + second["rows"].tolist()
    assert state["rows_per_rank"] == [12, 12]
    ranks = run_scenario(
        "queue_fill", devices=2, n=64, batch_size=4, queue_length=20, epochs=2, resume=ckpt
    )
    for before, result in zip((first, second), ranks, strict=True):
        resumed_rows = torch.cat(result["seen"]).tolist()  # only epoch 2 ran after the resume
        assert result["rows"].tolist() == (before["rows"].tolist() + resumed_rows)[-20:]
        assert result["appended"] == 64
    # One process resumed from the DDP checkpoint takes both ranks' rows, each once.
    (single,) = run_scenario(
        "queue_fill", n=64, batch_size=4, queue_length=40, epochs=2, resume=ckpt
    )
    restored = first["rows"].tolist() + second["rows"].tolist()
    assert single["appended"] == 64 + 64
    assert single["rows"].tolist() == (restored + torch.cat(single["seen"]).tolist())[-40:]
