"""What ``OnlineKNN`` says about its bank, and the metrics it logs at the end of an epoch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning.pytorch import LightningModule, Trainer
from torchmetrics import Metric, MetricCollection

from spt_core import named_metrics
from spt_knn._checks import check_labels
from spt_knn.bank import KNNBank

if TYPE_CHECKING:
    from spt_knn.online_knn import OnlineKNN


def metric_dict(metrics: Any, owner: str) -> dict[str, Metric]:
    """``metrics`` as ``{name: Metric}`` (a ``MetricCollection`` is unpacked).

    Raises:
        TypeError: If a metric is not a torchmetrics ``Metric``.
    """
    if isinstance(metrics, MetricCollection):
        metrics = dict(metrics.items(keep_base=True))
    named = named_metrics(metrics, owner=owner)
    for key, metric in named.items():
        if not isinstance(metric, Metric):
            raise TypeError(
                f"{owner}: metrics[{key!r}] must be a torchmetrics Metric instance, got "
                f"{type(metric).__name__}"
            )
    return named


def describe_bank(knn: OnlineKNN, trainer: Trainer, bank: KNNBank) -> None:
    """Say once per epoch what the bank left out, skipped, clipped or inferred."""
    if bank.non_finite:
        knn.warn_once(
            trainer,
            "non-finite-bank",
            f"left out {bank.non_finite} queue rows of '{knn.input}' with non-finite values",
        )
    if not bank.size:
        knn.info_once(
            trainer,
            "empty",
            f"the queue of '{knn.input}' holds no labelled rows yet (sanity check or first "
            "epoch); kNN evaluation skipped this epoch",
        )
        return
    if knn.k > bank.size:
        knn.warn_once(
            trainer,
            "k",
            f"k={knn.k} exceeds the {bank.size} labelled rows of the queue; using k={bank.size}",
        )
    if knn.num_classes is None:
        knn.warn_once(
            trainer,
            "num_classes",
            f"num_classes=None: inferred {bank.num_classes} classes from the largest label in "
            "the queue. Pass num_classes explicitly: inference undercounts while the queue has "
            "not seen every class, and a metric built for more classes then fails on the "
            "narrower predictions.",
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

    Every rank calls it together (one collective, one host sync). ``num_classes`` is
    ``None`` when the epoch was skipped.

    Raises:
        ValueError: If a validation label is ``>= num_classes``.
    """
    where = "validation" if stage == "val" else "test"
    skip: set[int] = set()
    for idx, (non_finite, top) in enumerate(knn.data_checks.read(stage, loaders, pl_module.device)):
        if num_classes is None:
            continue
        check_labels(top, num_classes, labels_of(knn, stage))
        if non_finite:
            skip.add(idx)
            knn.warn_once(
                trainer,
                f"non-finite-{stage}-{idx}",
                f"{non_finite} {where} rows of '{knn.input}' (loader {idx}) had non-finite "
                f"values: their scores mean nothing, so eval/{knn.name}_* is not logged for "
                "this loader this epoch",
            )
    results = knn.metrics.compute_and_reset(stage, loaders, pl_module.device, skip=skip)
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
        pl_module.log(
            f"eval/{knn.name}_{key}", value.squeeze(), sync_dist=False, add_dataloader_idx=False
        )
