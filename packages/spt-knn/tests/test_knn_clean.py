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
KEY = r"OnlineKNN\[name=knn\]"


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
        self.epochs, self.states, self.last = [], [], None

    def __call__(self, pl_module, batch):
        trainer = pl_module.trainer
        if self.last != (id(trainer), trainer.state.stage, trainer.current_epoch):
            self.last = (id(trainer), trainer.state.stage, trainer.current_epoch)
            self.epochs.append(trainer.current_epoch)
        training = [m.training for m in pl_module.modules()]
        self.states.append((any(training), torch.is_grad_enabled(), trainer.sanity_checking))
        return pl_module.encoder(batch["x"])


def _fit(tiny, knn, epochs, *, seed=0, logger=None, ckpt_path=None, callbacks=None, **kwargs):
    torch.manual_seed(seed)
    model = Backbone(dim=DIM, width=WIDTH, dropout=0.3)
    trainer = tiny.trainer(callbacks or [knn], max_epochs=epochs,
                           logger=logger or RecordingLogger(), log_every_n_steps=1,
                           **kwargs)  # fmt: skip
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


class Mix(Callback):
    """At each validation epoch start (callbacks run in list order): put the dropout in train
    mode when ``mix``, then record every module's mode and every ``requires_grad``."""

    def __init__(self, mix=False):
        self.mix, self.seen = mix, []

    def on_validation_epoch_start(self, trainer, pl_module):
        if self.mix:
            pl_module.dropout.train()
        modes = {name: m.training for name, m in pl_module.named_modules()}
        flags = {name: p.requires_grad for name, p in pl_module.named_parameters()}
        self.seen.append((modes, flags))


def test_the_schedule_is_epochs_0_n_2n_in_eval_mode_never_in_the_sanity_check(tiny):
    embedded = Embedded()
    knn = _knn(tiny, _rows(tiny, "clean"), clean_every_n_epochs=2, clean_embed=embedded)
    before, after = Mix(mix=True), Mix()
    trainer, _ = _fit(tiny, knn, 5, num_sanity_val_steps=2, callbacks=[before, knn, after])
    logged = trainer.logger.logged()
    assert embedded.epochs == [0, 2, 4]
    assert len(logged["eval/knn_clean_accuracy"]) == 3 and len(logged["eval/knn_accuracy"]) == 5
    assert knn.state_dict() == {"clean": {"schedule": {"last_epoch": 4}}}
    # The dropout was in train mode when the clean embedding started: it ran in eval mode,
    # without gradients, never in the sanity check, and the mixed modes came back.
    assert set(embedded.states) == {(False, False, False)}
    assert before.seen == after.seen and before.seen[-1][0]["dropout"] is True


def test_a_callback_reused_in_a_second_fit_starts_its_schedule_over(tiny):
    embedded = Embedded()
    knn = _knn(tiny, _rows(tiny, "clean"), clean_every_n_epochs=3, clean_embed=embedded)
    for _ in range(2):
        trainer, _ = _fit(tiny, knn, 2)
        assert len(trainer.logger.logged()["eval/knn_clean_accuracy"]) == 1
    assert embedded.epochs == [0, 0] and len(embedded.states) == 2 * 4


def test_validate_and_test_outside_fit_embed_every_time(tiny):
    embedded = Embedded()
    knn = _knn(tiny, _rows(tiny, "clean"), clean_every_n_epochs=3, clean_embed=embedded)
    trainer, model = _fit(tiny, knn, 1)
    trainer.validate(model, tiny.loader(*_rows(tiny, "val")), verbose=False)
    trainer.test(model, tiny.loader(*_rows(tiny, "val")), verbose=False)
    assert len(embedded.states) == 3 * 4  # 20 rows in batches of 5: the fit's epoch 0, twice
    assert "eval/knn_clean_accuracy" in trainer.callback_metrics


def test_embedding_leaves_modes_flags_gradients_and_training_as_they_were(tiny):
    """A frozen decoder and a dropout put in train mode before the clean embedding: right
    after it (in the same validation epoch start) the modes and requires_grad are as they
    were, and the fit trains exactly as without the clean bank (no gradient from the
    embedding, no random draw taken from the training's stream)."""
    runs = {}
    for clean in (True, False):
        kwargs = {} if clean else {"clean_loader": None}
        knn = _knn(tiny, _rows(tiny, "clean"), **kwargs)
        before, after = Mix(mix=True), Mix()
        torch.manual_seed(0)
        model = Backbone(dim=DIM, width=WIDTH, dropout=0.3)
        model.decoder.requires_grad_(False)
        trainer = tiny.trainer([before, knn, after], max_epochs=3)
        trainer.fit(model, tiny.loader(*_rows(tiny, "train")),
                    tiny.loader(*_rows(tiny, "val")))  # fmt: skip
        assert len(before.seen) == 3 and before.seen == after.seen
        modes, flags = after.seen[0]
        assert modes["dropout"] and not modes["encoder"]  # mixed modes, kept
        assert not flags["decoder.weight"] and flags["encoder.weight"]
        runs[clean] = {name: p.detach().clone() for name, p in model.named_parameters()}
        if clean:
            model.zero_grad(set_to_none=True)
            trainer.validate(model, tiny.loader(*_rows(tiny, "val")), verbose=False)
            assert all(p.grad is None for p in model.parameters())
            assert "eval/knn_clean_accuracy" in trainer.callback_metrics
    assert runs[True].keys() == runs[False].keys()
    for name, value in runs[True].items():
        assert torch.equal(value, runs[False][name]), name


def test_resume_embeds_at_the_epochs_of_the_uninterrupted_run(tiny, tmp_path):
    straight = Embedded()
    _fit(tiny, _knn(tiny, _rows(tiny, "clean"), clean_every_n_epochs=2, clean_embed=straight), 4)
    first, second = Embedded(), Embedded()
    knn = _knn(tiny, _rows(tiny, "clean"), clean_every_n_epochs=2, clean_embed=first)
    trainer, _ = _fit(tiny, knn, 2)
    trainer.save_checkpoint(tmp_path / "half.ckpt")
    resumed = _knn(tiny, _rows(tiny, "clean"), clean_every_n_epochs=2, clean_embed=second)
    _fit(tiny, resumed, 4, ckpt_path=tmp_path / "half.ckpt")
    assert straight.epochs == [0, 2]
    assert (first.epochs, second.epochs) == ([0], [2])


def test_the_last_embedded_epoch_survives_the_checkpoint(tiny, tmp_path):
    """Saved after epoch 0 (embedded there) with clean_every_n_epochs=2: the resumed fit
    starts at epoch 1, which is not due (a fresh schedule would embed there), and logs the
    clean values of the uninterrupted run."""

    def run(epochs, **kwargs):
        knn = _knn(tiny, _rows(tiny, "clean"), clean_every_n_epochs=2)
        trainer, _ = _fit(tiny, knn, epochs, **kwargs)
        return trainer, trainer.logger.logged()["eval/knn_clean_accuracy"]

    _, straight = run(3)
    half, first = run(1)
    half.save_checkpoint(tmp_path / "one.ckpt")
    saved = torch.load(tmp_path / "one.ckpt", weights_only=False)["callbacks"]
    assert saved["OnlineKNN[name=knn]"] == {"clean": {"schedule": {"last_epoch": 0}}}
    _, second = run(3, ckpt_path=tmp_path / "one.ckpt")
    assert len(straight) == 2 and first + second == straight


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
        ({"clean_every_n_epochs": 0}, ValueError, rf"{KEY}: clean_every_n_epochs must be an int"),
        ({"clean_every_n_epochs": 1.5}, TypeError, rf"{KEY}: clean_every_n_epochs must be an int"),
        ({"clean_loader": 3}, TypeError, rf"{KEY}: clean_loader must be an"),
        ({"clean_embed": "encoder"}, TypeError, rf"{KEY}: clean_embed must be a function"),
        (
            {"temperature": (0.1, 0.5), "weighting": "uniform"},
            ValueError,
            rf"{KEY}: weighting='uniform' ignores temperature, so temperature=\(0.1, 0.5\)",
        ),
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


def test_each_batch_is_scored_with_the_sweep_parsed_at_construction(tiny):
    """The pairs scored are the ones the metric copies were made for, whatever the ``k`` and
    ``temperature`` attributes hold later."""
    logged = []
    for touched in (False, True):
        knn = _knn(tiny, _rows(tiny, "clean"), k=(3, 5), temperature=[0.1, 0.5])
        if touched:
            knn.k, knn.temperature = 9, 2.0
        trainer, _ = _fit(tiny, knn, 1)
        logged.append(trainer.logger.logged())
    assert logged[0] == logged[1] and "eval/knn_clean_accuracy_k5_t0.5" in logged[0]


def test_a_validation_label_must_fit_every_bank_it_is_scored_against(tiny):
    """num_classes=None: the queue's rows hold labels 0..2 (3 classes), the clean loader's
    0..1 (2 classes). Every validation row is scored against both banks, so its label must
    fit the narrowest: label 2 has no column in the clean bank's scores (with a metric that
    does not check its inputs, only this check catches it)."""
    clean_x, clean_y = _rows(tiny, "clean")
    kept = clean_y < 2
    metric = MulticlassAccuracy(3, average="micro", validate_args=False)
    knn = _knn(tiny, (clean_x[kept], clean_y[kept]), num_classes=None,
               metrics={"accuracy": metric})  # fmt: skip
    with pytest.raises(ValueError, match=r"validation batch of 'label' holds label 2, but num_cl"):
        _fit(tiny, knn, 1)
    queue_only = _knn(tiny, (clean_x[kept], clean_y[kept]), num_classes=None, clean_loader=None,
                      metrics={"accuracy": metric})  # fmt: skip
    _fit(tiny, queue_only, 1)  # the queue bank alone has the class
