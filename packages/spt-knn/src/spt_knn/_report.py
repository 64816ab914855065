"""What ``OnlineKNN`` says about its bank, and the metrics it logs at the end of an epoch."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

from lightning.pytorch import LightningModule, Trainer
from torch import Tensor
from torchmetrics import MetricCollection

from spt_core import named_metrics
from spt_core.checks import check_label_range, check_metrics
from spt_knn.bank import KNNBank

if TYPE_CHECKING:
    from spt_knn.online_knn import OnlineKNN


def metric_dict(metrics: Any, owner: str) -> dict[str, Any]:
    """``metrics`` as ``{name: metric}`` (a ``MetricCollection`` is unpacked).

    Raises:
        TypeError: If a metric has no ``update``/``compute``/``reset``
            (:func:`spt_core.checks.is_metric`).
    """
    if isinstance(metrics, MetricCollection):
        metrics = dict(metrics.items(keep_base=True))
    named = named_metrics(metrics, owner=owner)
    check_metrics(named, owner)
    return named


def describe_bank(knn: OnlineKNN, trainer: Trainer, bank: KNNBank, which: str = "") -> None:
    """Say once per epoch what the bank (``which``: ``""`` for the queue's, ``"clean"``) left
    out, skipped, clipped or inferred."""
    source = "the clean loader" if which else f"the queue of '{knn.input}'"
    if bank.non_finite:
        rows = "rows of the clean loader" if which else f"queue rows of '{knn.input}'"
        knn.warn_once(
            trainer,
            f"non-finite-bank{which}",
            f"left out {bank.non_finite} {rows} with non-finite values",
        )
    if not bank.size:
        knn.info_once(
            trainer,
            f"empty{which}",
            f"{source} holds no labelled rows; clean kNN evaluation skipped this epoch"
            if which
            else f"{source} holds no labelled rows yet (sanity check or first epoch); kNN "
            "evaluation skipped this epoch",
        )
        return
    clipped = [k for k in knn.sweep.ks if k > bank.size]
    if clipped:
        ks = clipped[0] if len(clipped) == 1 else tuple(clipped)
        knn.warn_once(
            trainer,
            f"k{which}",
            f"k={ks} exceeds the {bank.size} labelled rows of {source}; using k={bank.size}",
        )
    if knn.num_classes is None:
        knn.warn_once(
            trainer,
            f"num_classes{which}",
            f"num_classes=None: inferred {bank.num_classes} classes from the largest label in "
            f"{source}. Pass num_classes explicitly: inference undercounts while the bank has "
            "not seen every class, and a metric built for more classes then fails on the "
            "narrower predictions.",
        )


def write_preds(
    knn: OnlineKNN, trainer: Trainer, batch: MutableMapping, which: str, scores: dict
) -> None:
    """Write a batch's scores at ``{name}_preds`` (``{name}_clean_preds`` for the clean
    bank): a tensor, or ``{(k, T): scores}`` for a sweep."""
    key = f"{knn.name}_{which}_preds" if which else f"{knn.name}_preds"
    if key in batch:
        knn.warn_once(
            trainer,
            f"preds-key{which}",
            f"the batch already holds '{key}'; it is overwritten with this callback's "
            "predictions (rename the batch entry or the callback to keep both)",
        )
    batch[key] = scores if knn.sweep.swept else scores[knn.sweep.pairs[0]]


def say_deferred(knn: OnlineKNN, trainer: Trainer, uneven: list[list[int]]) -> None:
    """Say once that shard mode scores the rows at the end of the epoch, and why."""
    knn.info_once(
        trainer,
        "deferred",
        "the ranks run different (or unknown) numbers of evaluation batches "
        f"{uneven} (per rank, per loader; -1: unknown): shard mode scores the rows "
        f"at the end of the epoch, and does not write batch['{knn.name}_preds']",
    )


def labels_of(knn: OnlineKNN, stage: str) -> str:
    """How an error names a batch of labels of ``stage``."""
    where = "validation" if stage == "val" else "test"
    return f"{knn.state_key}: a {where} batch of '{knn.target}'"


def log_epoch(
    knn: OnlineKNN,
    trainer: Trainer,
    pl_module: LightningModule,
    stage: str,
    loaders: int,
    num_classes: int | None,
) -> None:
    """Check the epoch's labels and features, then compute, log and reset the metrics.

    Every rank calls it together (one collective and one host sync, then one small
    collective per board). ``num_classes`` (the smallest of the epoch's banks) is ``None``
    when the epoch was skipped.

    Raises:
        ValueError: If a validation label is ``>= num_classes``.
    """
    where = "validation" if stage == "val" else "test"
    skip: set[int] = set()
    for idx, (non_finite, top) in enumerate(knn.data_checks.read(stage, loaders, pl_module.device)):
        if num_classes is None:
            continue
        check_label_range(top, num_classes, labels_of(knn, stage))
        if non_finite:
            skip.add(idx)
            knn.warn_once(
                trainer,
                f"non-finite-{stage}-{idx}",
                f"{non_finite} {where} rows of '{knn.input}' (loader {idx}) had non-finite "
                f"values: their scores mean nothing, so eval/{knn.name}_* is not logged for "
                "this loader this epoch",
            )
    results = knn.metrics.compute_and_reset(knn.name, stage, loaders, pl_module.device, skip)
    for key, value in results.items():
        if value.numel() != 1:
            knn.warn_once(
                trainer,
                f"shape:{key}",
                f"metric '{key}' computes a tensor of shape {tuple(value.shape)}; only scalars "
                "are logged",
            )
            continue
        # torchmetrics already reduced the value across ranks inside compute().
        knn.log_agreed(pl_module, {key: value.squeeze()}, add_dataloader_idx=False)


def log_banks(
    knn: OnlineKNN, pl_module: LightningModule, report: dict[str, tuple[int, Tensor]]
) -> None:
    """Log ``eval/{name}_{bank_}bank_rows`` and ``..._bank_classes`` of each bank read this
    epoch (values already over every rank: each rank logs the same)."""
    for which, (rows, classes) in report.items():
        prefix = f"eval/{knn.name}_{which}_" if which else f"eval/{knn.name}_"
        values = {prefix + "bank_rows": float(rows), prefix + "bank_classes": classes.float()}
        knn.log_agreed(pl_module, values, add_dataloader_idx=False)
