"""kNN on clean features of a labelled loader (#16): an offline reference, the schedule, the
model left as it was, resume."""

import contextlib

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torchmetrics.classification import MulticlassAccuracy

from spt_core.testing import Backbone, RecordingLogger, forbid_host_sync
from spt_distance import _plan
from spt_knn import OnlineKNN, knn_predict

DIM, WIDTH = 4, 8


def _rows(tiny, part):
    """Rows of one set of three blobs: ``"train"`` (48), ``"clean"`` (20), ``"val"`` (24), the
    last two with extra noise."""
    x, y = tiny.data(92, DIM, 3, 0)
    x = x + torch.cat(
        [
            torch.zeros(48, DIM),
            torch.randn(44, DIM, generator=torch.Generator().manual_seed(5)) * 1.5,
        ]
    )
    start, stop = {"train": (0, 48), "clean": (48, 68), "val": (68, 92)}[part]
    return x[start:stop], y[start:stop]


def _knn(tiny, clean, **kwargs):
    settings = {
        "name": "knn", "input": "embedding", "target": "label", "queue_length": 32,
        "metrics": {"accuracy": MulticlassAccuracy(3, average="micro")}, "num_classes": 3,
        "k": 5, "clean_loader": tiny.loader(*clean, batch_size=5),
    }  # fmt: skip
    return OnlineKNN(**{**settings, **kwargs})


class Embedded(Callback):
    """The epochs at which ``embed`` ran, and what it saw of the model."""

    def __init__(self):
        self.epochs, self.states = [], []

    def __call__(self, pl_module, batch):
        trainer = pl_module.trainer
        if not self.states or self.epochs[-1] != trainer.current_epoch:
            self.epochs.append(trainer.current_epoch)
        training = [m.training for m in pl_module.modules()]
        self.states.append((any(training), torch.is_grad_enabled(), trainer.sanity_checking))
        return pl_module.encoder(batch["x"])


def _fit(tiny, knn, epochs, *, seed=0, logger=None, ckpt_path=None, **kwargs):
    torch.manual_seed(seed)
    model = Backbone(dim=DIM, width=WIDTH, dropout=0.3)
    trainer = tiny.trainer([knn], max_epochs=epochs, logger=logger or RecordingLogger(),
                           log_every_n_steps=1, **kwargs)  # fmt: skip
    train = tiny.loader(*_rows(tiny, "train"))
    trainer.fit(model, train, tiny.loader(*_rows(tiny, "val")), ckpt_path=ckpt_path)
    return trainer, model


def test_clean_bank_scores_equal_knn_predict_on_the_loader_embedded_by_hand(tiny):
    clean = _rows(tiny, "clean")
    knn = _knn(tiny, clean, k=(3, 7), temperature=0.5, weighting="exp")
    trainer, model = _fit(tiny, knn, 2)
    logged = trainer.logger.logged()
    model.eval()
    val_x, val_y = _rows(tiny, "val")
    with torch.no_grad():
        bank, queries = model.encoder(clean[0]), model.encoder(val_x)
    for k in (3, 7):
        scores = knn_predict(queries, bank, clean[1], 3, k=k, temperature=0.5, weighting="exp")
        expected = (scores.argmax(dim=1) == val_y).float().mean().item()
        assert logged[f"eval/knn_clean_accuracy_k{k}"][-1] == pytest.approx(expected)
        assert 0.3 < expected < 1.0  # a value a wrong bank would change
    assert logged["eval/knn_clean_bank_rows"] == [20, 20]
    assert logged["eval/knn_clean_bank_classes"] == [3, 3]
    assert len(logged["eval/knn_accuracy_k3"]) == 2  # the queue's, beside it


def test_the_schedule_skips_the_sanity_check_and_the_epochs_between(tiny):
    embedded = Embedded()
    knn = _knn(tiny, _rows(tiny, "clean"), clean_every_n_epochs=2, embed=embedded)
    trainer, _ = _fit(tiny, knn, 5, num_sanity_val_steps=2)
    logged = trainer.logger.logged()
    assert embedded.epochs == [1, 3]
    assert len(logged["eval/knn_clean_accuracy"]) == 2 and len(logged["eval/knn_accuracy"]) == 5
    assert knn.state_dict() == {"clean_embedded_epoch": 3}
    # In eval mode, without gradients, never in the sanity check.
    assert set(embedded.states) == {(False, False, False)}


def test_validate_and_test_outside_fit_embed_every_time(tiny):
    embedded = Embedded()
    knn = _knn(tiny, _rows(tiny, "clean"), clean_every_n_epochs=3, embed=embedded)
    trainer, model = _fit(tiny, knn, 1)
    trainer.validate(model, tiny.loader(*_rows(tiny, "val")), verbose=False)
    trainer.test(model, tiny.loader(*_rows(tiny, "val")), verbose=False)
    assert len(embedded.states) == 2 * 4  # 20 rows in batches of 5, twice
    assert "eval/knn_clean_accuracy" in trainer.callback_metrics


def test_embedding_leaves_modes_flags_gradients_and_training_as_they_were(tiny):
    """A frozen decoder and dropout: after every clean evaluation the modes and requires_grad
    are restored, and the fit trains exactly as without the clean bank (no gradient from the
    embedding, no random draw taken from the training's stream)."""
    runs = {}
    for clean in (True, False):
        kwargs = {} if clean else {"clean_loader": None}
        knn = _knn(tiny, _rows(tiny, "clean"), **kwargs)
        torch.manual_seed(0)
        model = Backbone(dim=DIM, width=WIDTH, dropout=0.3)
        model.decoder.requires_grad_(False)
        model.dropout.train()
        trainer = tiny.trainer([knn], max_epochs=3)
        trainer.fit(model, tiny.loader(*_rows(tiny, "train")),
                    tiny.loader(*_rows(tiny, "val")))  # fmt: skip
        assert [p.requires_grad for p in model.decoder.parameters()] == [False, False]
        assert model.encoder.weight.requires_grad and model.training
        runs[clean] = {name: p.detach().clone() for name, p in model.named_parameters()}
        if clean:
            model.eval()
            model.zero_grad(set_to_none=True)
            trainer.validate(model, tiny.loader(*_rows(tiny, "val")), verbose=False)
            assert all(p.grad is None for p in model.parameters())
            assert not any(m.training for m in model.modules())  # eval mode stays eval mode
            assert "eval/knn_clean_accuracy" in trainer.callback_metrics
    assert runs[True].keys() == runs[False].keys()
    for name, value in runs[True].items():
        assert torch.equal(value, runs[False][name]), name


def test_resume_embeds_at_the_epochs_of_the_uninterrupted_run(tiny, tmp_path):
    straight = Embedded()
    _fit(tiny, _knn(tiny, _rows(tiny, "clean"), clean_every_n_epochs=2, embed=straight), 4)
    first, second = Embedded(), Embedded()
    knn = _knn(tiny, _rows(tiny, "clean"), clean_every_n_epochs=2, embed=first)
    trainer, _ = _fit(tiny, knn, 2)
    trainer.save_checkpoint(tmp_path / "half.ckpt")
    resumed = _knn(tiny, _rows(tiny, "clean"), clean_every_n_epochs=2, embed=second)
    _fit(tiny, resumed, 4, ckpt_path=tmp_path / "half.ckpt")
    assert straight.epochs == [1, 3]
    assert (first.epochs, second.epochs) == ([1], [3])


def test_the_last_embedded_epoch_survives_the_checkpoint(tiny):
    knn = _knn(tiny, _rows(tiny, "clean"), clean_every_n_epochs=2)
    knn.load_state_dict({"clean_embedded_epoch": 1})
    assert knn.clean.last_epoch == 1

    class During:  # a resumed validation in the epoch already embedded does not embed again
        sanity_checking, current_epoch = False, 1
        state = type("State", (), {"fn": "fit"})()

    assert not knn.clean.due(During, "val")
    knn.load_state_dict({})
    assert knn.clean.due(During, "val")


def test_queue_length_zero_evaluates_the_clean_bank_only(tiny):
    knn = _knn(tiny, _rows(tiny, "clean"), queue_length=0)
    trainer, _ = _fit(tiny, knn, 2)
    names = set(trainer.logger.logged()) - {"epoch"}
    assert names == {
        "eval/knn_clean_accuracy", "eval/knn_clean_bank_rows", "eval/knn_clean_bank_classes"
    }  # fmt: skip
    assert not [c for c in trainer.callbacks if type(c).__name__ == "OnlineQueue"]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"clean_every_n_epochs": 0}, ValueError, "clean_every_n_epochs must be a positive"),
        ({"clean_every_n_epochs": 1.5}, TypeError, "clean_every_n_epochs must be a positive"),
        ({"clean_loader": 3}, TypeError, r"OnlineKNN\[name=knn\]: clean_loader must be an"),
        ({"embed": "encoder"}, TypeError, r"OnlineKNN\[name=knn\]: embed must be a function"),
        (
            {"clean_loader": None, "queue_length": 0},
            ValueError,
            r"OnlineKNN\[name=knn\]: queue_length=0 turns the queue bank off",
        ),
    ],
)
def test_bad_clean_options_are_refused(tiny, kwargs, error, message):
    with pytest.raises(error, match=message):
        _knn(tiny, _rows(tiny, "clean"), **kwargs)


def test_a_batch_scored_against_a_sweep_of_both_banks_waits_for_nothing(tiny, monkeypatch):
    """After the first batch (which may settle shapes), no host sync per batch: the sweep's
    votes and both banks' searches stay on the device (torchmetrics' classification metrics
    have syncs of their own: none here)."""
    monkeypatch.setattr(_plan, "sync_free", lambda device: True)  # the search off the CPU
    seen = []

    class Watch(OnlineKNN):
        def _eval_batch_end(self, trainer, pl_module, stage, outputs, batch, dataloader_idx):
            with forbid_host_sync() if seen else contextlib.nullcontext():
                super()._eval_batch_end(trainer, pl_module, stage, outputs, batch, dataloader_idx)
            seen.append({key: batch[key] for key in ("knn_preds", "knn_clean_preds")})

    clean = tiny.loader(*_rows(tiny, "clean"))
    knn = Watch("knn", "embedding", "label", 32, None, num_classes=3, k=(3, 5),
                temperature=(0.1, 0.5), clean_loader=clean)  # fmt: skip
    trainer, _ = _fit(tiny, knn, 1)
    assert len(seen) == 3 and all(len(preds["knn_clean_preds"]) == 4 for preds in seen)
    assert trainer.callback_metrics["eval/knn_clean_bank_rows"] == 20
