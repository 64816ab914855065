"""spt_embed.embed_loader: clean features of a labelled loader."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    SequentialSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)
from torchmetrics.classification import MulticlassAccuracy

from spt_core import distributed
from spt_core.testing import Backbone, DictDataset, RecordingLogger, quiet_trainer
from spt_embed import agree_features, embed_loader, gather_in_loader_order


def normed_features(batch: dict, module: Backbone) -> dict:
    """Encoder, BatchNorm, dropout and a frozen head: every mode matters."""
    hidden = module.dropout(module.norm(module.encoder(batch["x"])))
    return {"z": module.head(hidden), "y": batch["label"]}


def mixed_module() -> Backbone:
    torch.manual_seed(0)
    module = Backbone(dim=4, width=5, dropout=0.5, outputs=normed_features)
    module.norm = nn.BatchNorm1d(5)
    module.head = nn.Linear(5, 3)
    module.head.requires_grad_(False)
    module.train()
    module.head.eval()  # a submodule whose mode differs from its parent's
    return module


def labelled(n: int = 10, dim: int = 4) -> DictDataset:
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(1))
    return DictDataset(x=x, label=torch.arange(n) % 3)


def test_matches_embedding_by_hand_and_restores_everything():
    module, data = mixed_module(), labelled()
    module.encoder.weight.grad = torch.full_like(module.encoder.weight, 7.0)
    modes = {name: m.training for name, m in module.named_modules()}
    flags = {name: p.requires_grad for name, p in module.named_parameters()}
    before = {name: t.clone() for name, t in module.state_dict().items()}

    features, labels = embed_loader(
        module, DataLoader(data, batch_size=4), input="z", target="y", owner="Demo[name=d]"
    )

    assert {name: m.training for name, m in module.named_modules()} == modes
    assert {name: p.requires_grad for name, p in module.named_parameters()} == flags
    assert all(torch.equal(t, before[name]) for name, t in module.state_dict().items())
    assert torch.equal(module.encoder.weight.grad, torch.full_like(module.encoder.weight, 7.0))
    assert all(p.grad is None for name, p in module.named_parameters() if "encoder" not in name)
    assert not features.requires_grad and labels.dtype == torch.long
    module.eval()
    with torch.no_grad():
        expected = normed_features({"x": data.columns["x"], "label": None}, module)["z"]
    assert torch.allclose(features, expected, atol=1e-6)
    assert torch.equal(labels, data.columns["label"])


def test_global_random_streams_are_left_alone():
    module = Backbone(dim=4, outputs=lambda b, m: {"z": b["x"] + torch.rand(1), "y": b["label"]})
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    embed_loader(module, DataLoader(labelled(), batch_size=4), input="z", target="y", owner="d")
    assert torch.equal(torch.rand(3), expected)


def test_embed_function_flattening_and_batch_fallback():
    data = labelled(5, dim=6)
    module = Backbone(dim=6, shape=(2, 3))
    flat, labels = embed_loader(
        module, DataLoader(data, batch_size=2), input="embedding", target="label", owner="d"
    )
    assert torch.equal(flat, data.columns["x"]) and torch.equal(labels, data.columns["label"])
    doubled, _ = embed_loader(
        module, DataLoader(data, batch_size=2), input="unused", target="label",
        embed=lambda m, batch: 2 * batch["x"].reshape(-1, 3, 2), owner="d",
    )  # fmt: skip
    assert torch.equal(doubled, 2 * data.columns["x"])
    raw, _ = embed_loader(
        Backbone(input_key="other"), DataLoader(data, batch_size=2),
        input="x", target="label", owner="d",
    )  # fmt: skip
    assert torch.equal(raw, data.columns["x"])  # not in the outputs: read from the batch


def test_empty_loader_gives_no_rows():
    features, labels = embed_loader(Backbone(), [], input="embedding", target="label", owner="d")
    assert features.shape == (0, 0) and labels.shape == (0,) and labels.dtype == torch.long


def test_the_arguments_of_a_gather_are_checked_on_one_process_too():
    """A mismatched ``index`` or ``labels`` was returned unchecked without a process group
    and failed inside a collective with one; a module that is no LightningModule failed with
    an ``AttributeError`` reading its device."""
    features, labels = torch.ones(4, 2), torch.arange(4)
    with pytest.raises(ValueError, match=r"gather_in_loader_order: index must have shape \(4,\)"):
        gather_in_loader_order(features, labels, torch.arange(3))
    with pytest.raises(TypeError, match="gather_in_loader_order: labels must be an integer"):
        gather_in_loader_order(features, labels.float(), torch.arange(4))
    with pytest.raises(ValueError, match="agree_features: features must be a 2-D tensor"):
        agree_features(torch.ones(4))
    with pytest.raises(TypeError, match="d: pl_module must be a LightningModule, got Linear"):
        embed_loader(nn.Linear(2, 2), [], input="embedding", target="label", owner="d")


def test_bad_features_and_labels_name_owner_and_key():
    data = labelled(4)
    loader = DataLoader(data, batch_size=2)
    owner = "OnlineProbe[name=clean]"
    with pytest.raises(KeyError, match=r"OnlineProbe\[name=clean\].*'feat'"):
        embed_loader(Backbone(dim=4), loader, input="feat", target="label", owner=owner)
    with pytest.raises(KeyError, match=r"OnlineProbe\[name=clean\].*'klass'"):
        embed_loader(Backbone(dim=4), loader, input="embedding", target="klass", owner=owner)
    with pytest.raises(TypeError, match=r"OnlineProbe\[name=clean\].*'x'.*float32"):
        embed_loader(Backbone(dim=4), loader, input="embedding", target="x", owner=owner)
    not_tensor = Backbone(dim=4, outputs=lambda b, m: {"z": b["x"].tolist(), "y": b["label"]})
    with pytest.raises(TypeError, match=r"OnlineProbe\[name=clean\].*'z'.*list"):
        embed_loader(not_tensor, loader, input="z", target="y", owner=owner)
    listed = Backbone(dim=4, outputs=lambda b, m: {"z": b["x"], "y": b["label"].tolist()})
    with pytest.raises(TypeError, match=r"OnlineProbe\[name=clean\].*'y'.*list"):
        embed_loader(listed, loader, input="z", target="y", owner=owner)
    short = Backbone(dim=4, outputs=lambda b, m: {"z": b["x"], "y": b["label"][:1]})
    with pytest.raises(ValueError, match=r"OnlineProbe\[name=clean\].*2 feature rows.*1 labels"):
        embed_loader(short, loader, input="z", target="y", owner=owner)
    widening = Backbone(dim=4, outputs=lambda b, m: {"z": b["x"][:, : int(b["index"][0]) + 1]})
    with pytest.raises(ValueError, match=r"OnlineProbe\[name=clean\].*'z' changed width.*1 then 3"):
        embed_loader(widening, loader, input="z", target="label", owner=owner)
    with pytest.raises(TypeError, match=r"OnlineProbe\[name=clean\].*embed\(pl_module, batch\)"):
        embed_loader(
            Backbone(), loader, input="z", target="label", embed=lambda m, b: None, owner=owner
        )


class Batches(IterableDataset):
    """An iterable dataset of rows (no length, no sampler)."""

    def __init__(self, data: DictDataset) -> None:
        self.data = data

    def __iter__(self):
        return (self.data[i] for i in range(len(self.data)))


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(0, 23),
    batch_size=st.integers(1, 5),
    world=st.integers(1, 4),
    kind=st.sampled_from(["map", "iterable", "list"]),
)
def test_ranks_embed_disjoint_complete_shares(rows, batch_size, world, kind):
    data = DictDataset(x=torch.arange(float(rows)).reshape(rows, 1), label=torch.arange(rows))
    if kind == "map":
        loader = DataLoader(data, batch_size=batch_size)
    elif kind == "iterable":
        loader = DataLoader(Batches(data), batch_size=batch_size)
    else:
        loader = list(DataLoader(data, batch_size=batch_size))
    shares = []
    for rank in range(world):
        module = Backbone(dim=1)
        with (
            mock.patch.object(distributed, "world_size", return_value=world),
            mock.patch.object(distributed, "rank", return_value=rank),
        ):
            features, labels, index = embed_loader(
                module, loader, input="embedding", target="label", owner="d", with_index=True
            )
        assert torch.equal(features.reshape(-1).long(), labels)
        expected = [i for i in range(rows) if (i // batch_size) % world == rank]
        assert labels.tolist() == expected  # rank r embeds batches r, r + W, ...
        assert torch.equal(index, labels)  # each row's position in the loader
        shares.extend(labels.tolist())
    assert sorted(shares) == list(range(rows))


def test_shuffling_loader_is_refused_under_ddp():
    loader = DataLoader(labelled(4), batch_size=2, shuffle=True)
    with (
        mock.patch.object(distributed, "world_size", return_value=2),
        mock.patch.object(distributed, "rank", return_value=0),
        pytest.raises(ValueError, match=r"Demo\[name=d\].*shuffle"),
    ):
        embed_loader(Backbone(), loader, input="embedding", target="label", owner="Demo[name=d]")


def counting_rows(batch: dict, module: Backbone) -> dict:
    stage = "train" if module.trainer.training else "val"
    rows = float(len(batch["x"]))
    module.log(f"{stage}_rows", rows, reduce_fx="sum", on_epoch=True, on_step=False)
    module.log_dict({f"{stage}_dict_rows": rows}, reduce_fx="sum", on_epoch=True, on_step=False)
    return {"embedding": batch["x"], "label": batch["label"]}


class EmbedAtValidation(Callback):
    """Embeds a clean loader at every validation epoch start and keeps the result."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self.embedded: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.embedded.append(
            embed_loader(pl_module, self.loader, input="embedding", target="label", owner="e")
        )


def test_log_calls_inside_validation_step_are_dropped_in_a_trainer():
    clean = DataLoader(labelled(10), batch_size=3)
    callback = EmbedAtValidation(clean)
    logger = RecordingLogger()
    trainer = quiet_trainer(callbacks=[callback], logger=logger, max_epochs=2)
    module = Backbone(dim=4, outputs=counting_rows)
    trainer.fit(module, DataLoader(labelled(8), batch_size=4), DataLoader(labelled(4)))
    assert logger.values("val_rows") == [4.0, 4.0] == logger.values("val_dict_rows")
    assert logger.values("train_rows") == [8.0, 8.0]
    assert "log" not in module.__dict__ and "log_dict" not in module.__dict__
    assert len(callback.embedded) == 2
    for features, labels in callback.embedded:
        assert torch.equal(features, labelled(10).columns["x"]) and labels.shape == (10,)


def sampled(data: DictDataset, kind: str) -> DataLoader:
    """A loader over ``data`` whose sampler is ``kind``."""
    if kind == "SubsetRandomSampler":
        return DataLoader(data, batch_size=2, sampler=SubsetRandomSampler(range(len(data))))
    if kind == "WeightedRandomSampler":
        return DataLoader(data, batch_size=2, sampler=WeightedRandomSampler([1.0] * len(data), 4))
    shuffle = kind == "DistributedSampler(shuffle=True)"
    sharded = DistributedSampler(data, num_replicas=2, rank=0, shuffle=shuffle)
    if kind == "BatchSampler(DistributedSampler)":
        return DataLoader(data, batch_sampler=BatchSampler(sharded, 2, drop_last=False))
    return DataLoader(data, batch_size=2, sampler=sharded)


@pytest.mark.parametrize(
    ("kind", "named"),
    [
        ("SubsetRandomSampler", "SubsetRandomSampler"),
        ("WeightedRandomSampler", "WeightedRandomSampler"),
        ("DistributedSampler(shuffle=False)", "DistributedSampler"),
        ("DistributedSampler(shuffle=True)", "DistributedSampler"),
        ("BatchSampler(DistributedSampler)", "DistributedSampler"),
    ],
)
def test_random_or_sharding_samplers_are_refused_under_ddp(kind, named):
    with (
        mock.patch.object(distributed, "world_size", return_value=2),
        mock.patch.object(distributed, "rank", return_value=0),
        pytest.raises(ValueError, match=rf"Demo\[name=d\].*a {named},.*shuffle=False.*padding"),
    ):
        embed_loader(
            Backbone(), sampled(labelled(5), kind),
            input="embedding", target="label", owner="Demo[name=d]",
        )  # fmt: skip


def test_batch_sampler_over_a_sequential_sampler_is_split_under_ddp():
    data = DictDataset(x=torch.randn(7, 2), label=torch.arange(7))
    loader = DataLoader(data, batch_sampler=BatchSampler(SequentialSampler(data), 2, False))
    for rank, expected in [(0, [0, 1, 4, 5]), (1, [2, 3, 6])]:
        with (
            mock.patch.object(distributed, "world_size", return_value=2),
            mock.patch.object(distributed, "rank", return_value=rank),
        ):
            features, labels, index = embed_loader(
                Backbone(), loader, input="x", target="label", owner="d", with_index=True
            )
        assert labels.tolist() == expected == index.tolist()
        assert torch.equal(features, data.columns["x"][expected])


def test_index_of_an_empty_share_is_empty():
    _, _, index = embed_loader(
        Backbone(), [], input="embedding", target="label", owner="d", with_index=True
    )
    assert index.shape == (0,) and index.dtype == torch.long


def scored(batch: dict, module: Backbone) -> dict:
    """Updates (or calls) the module's accuracy on validation batches, as users do."""
    if not module.trainer.training:
        preds, target = batch["x"].argmax(dim=1), batch["label"]
        if module.by_update:
            module.accuracy.update(preds, target)
        else:
            module.accuracy(preds, target)  # forward: updates and computes the batch's value
        module.log("val_acc", module.accuracy, on_epoch=True, on_step=False)
    return {"embedding": batch["x"], "label": batch["label"]}


class EmbedAfterFirstBatch(Callback):
    """Embeds a clean loader in the middle of each validation epoch."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == 0:
            embed_loader(pl_module, self.loader, input="embedding", target="label", owner="e")


@pytest.mark.parametrize("by_update", [True, False])
def test_torchmetrics_updated_in_validation_step_log_as_without_embedding(by_update):
    val = DataLoader(labelled(8, dim=3), batch_size=2)
    clean = DataLoader(DictDataset(x=torch.eye(3).repeat(4, 1), label=torch.arange(12) % 3))
    logged = []
    for callbacks in ([], [EmbedAfterFirstBatch(clean)]):
        module = Backbone(dim=3, outputs=scored)
        module.accuracy, module.by_update = MulticlassAccuracy(num_classes=3), by_update
        logger = RecordingLogger()
        trainer = quiet_trainer(callbacks=callbacks, logger=logger, max_epochs=2)
        trainer.fit(module, DataLoader(labelled(4, dim=3), batch_size=2), val)
        logged.append(logger.values("val_acc"))
        assert module.accuracy._update_count == 0  # reset by Lightning at each epoch end
    assert logged[0] == logged[1] and len(logged[0]) == 2 and 0 < logged[0][0] < 1


def test_metric_compute_and_cache_are_as_before_without_a_trainer():
    class Scored(Backbone):
        def validation_step(self, batch, batch_idx):
            self.accuracy.update(batch["x"].argmax(dim=1), batch["label"])
            return {"embedding": batch["x"], "label": batch["label"]}

    module = Scored(dim=3)
    module.accuracy = MulticlassAccuracy(num_classes=3)
    for batch_idx, batch in enumerate(DataLoader(labelled(6, dim=3), batch_size=3)):
        module.validation_step(batch, batch_idx)
    before = module.accuracy.compute()
    clean = DataLoader(DictDataset(x=torch.eye(3), label=torch.arange(3)), batch_size=2)
    embed_loader(module, clean, input="embedding", target="label", owner="d")
    assert module.accuracy._update_count == 2 and module.accuracy._computed is before
    module.accuracy._computed = None
    assert torch.equal(module.accuracy.compute(), before)


class Precise(Callback):
    """Keeps the validation loop's features and embeds the same data at validation end."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self.validated: list[torch.Tensor] = []
        self.embedded: torch.Tensor | None = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.validated.append(outputs["embedding"])

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.embedded, _ = embed_loader(
            pl_module, self.loader, input="embedding", target="label", owner="p"
        )


@pytest.mark.parametrize("precision", ["bf16-true", "bf16-mixed"])
def test_features_are_the_validation_loops_under_the_trainers_precision(precision):
    torch.manual_seed(0)
    module = Backbone(dim=4, width=3)
    val = DataLoader(labelled(6), batch_size=4)
    callback = Precise(val)
    trainer = quiet_trainer(callbacks=[callback], precision=precision, max_epochs=1)
    trainer.fit(module, DataLoader(labelled(4), batch_size=2), val)
    validated = torch.cat(callback.validated)
    assert validated.dtype == torch.bfloat16
    assert callback.embedded.dtype == torch.bfloat16
    assert torch.equal(callback.embedded, validated)


class Hooked(Backbone):
    def on_before_batch_transfer(self, batch, dataloader_idx):
        return {**batch, "x": 2 * batch["x"]}

    def on_after_batch_transfer(self, batch, dataloader_idx):
        return {**batch, "x": batch["x"] + 1}


def test_batch_transfer_hooks_run_with_and_without_a_trainer():
    data = labelled(5)
    expected = 2 * data.columns["x"] + 1
    features, _ = embed_loader(
        Hooked(dim=4), DataLoader(data, batch_size=2), input="embedding", target="label", owner="d"
    )
    assert torch.equal(features, expected)
    callback = EmbedAtValidation(DataLoader(data, batch_size=2))
    quiet_trainer(callbacks=[callback]).fit(Hooked(dim=4), DataLoader(data), DataLoader(data))
    assert torch.equal(callback.embedded[0][0], expected)


def test_a_required_dataloader_idx_is_passed_as_zero():
    class Indexed(Backbone):
        def validation_step(self, batch, batch_idx, dataloader_idx):
            assert dataloader_idx == 0
            return {"embedding": batch["x"], "label": batch["label"]}

    data = labelled(3)
    features, _ = embed_loader(
        Indexed(dim=4), DataLoader(data), input="embedding", target="label", owner="d"
    )
    assert torch.equal(features, data.columns["x"])
