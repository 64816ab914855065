"""The rows that vote: labelled, finite bank rows, checked once for any number of votes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from spt_core import distributed
from spt_core.checks import check_label_range, finite_rows, positive_int
from spt_knn._checks import integer_rows
from spt_knn.search import knn_neighbours
from spt_knn.sharded import RoundShape, sharded_neighbours


@dataclass(frozen=True)
class KNNBank:
    """Bank rows ready for sync-free kNN votes, made by :func:`knn_bank`.

    Pass it to :func:`spt_knn.knn_predict` in place of the bank tensor, its labels and
    ``num_classes``: the labels were checked when it was made, so a prediction waits for
    nothing on the device.

    Args:
        features: ``(N, D)`` the rows that vote: a label ``>= 0`` and finite features.
        labels: ``(N,)`` int64 labels, ``< num_classes``.
        num_classes: Width of the scores.
        size: Voting rows in the whole bank: ``N``, or the sum over the ranks of a sharded
            bank.
        non_finite: Rows left out because a feature was not finite (over every rank when
            sharded).
        rounds: For a bank sharded across ranks, the shape of the collective search rounds
            (see :meth:`in_rounds`); ``None`` for a bank held whole.
        keys: For a shard, ``(N,)`` each row's position in the whole bank, which breaks exact
            ties between shards; ``None``: the bank is the shards in rank order.

    Raises:
        RuntimeError: From :meth:`neighbours`, for one rank's shard of a bank split across
            ranks (``size`` above its own rows) searched without its :meth:`in_rounds`.
        ValueError: From :meth:`neighbours`, if a sharded round gets more queries than its
            rows.

    Example:
        >>> bank = knn_bank(torch.tensor([[0.0], [1.0], [5.0]]), torch.tensor([0, 1, 1]))
        >>> bank.num_classes, bank.size
        (2, 3)
        >>> distances, labels = bank.neighbours(torch.tensor([[0.8]]), k=2)
        >>> labels.tolist()
        [[1, 0]]
    """

    features: Tensor
    labels: Tensor
    num_classes: int
    size: int
    non_finite: int = 0
    rounds: RoundShape | None = None
    keys: Tensor | None = None

    def in_rounds(self, rounds: RoundShape) -> KNNBank:
        """This shard of a bank split across ranks, searched in collective ``rounds``
        (:func:`spt_knn.agree_on_rounds`): every rank must then predict together."""
        return dataclasses.replace(self, rounds=rounds)

    def neighbours(
        self,
        queries: Tensor,
        k: int,
        distance_metric: str = "euclidean",
        chunk_size: int | None = -1,
    ) -> tuple[Tensor, Tensor]:
        """Distances and labels of the ``min(k, size)`` nearest voting rows of ``queries``.

        Raises:
            RuntimeError: For a shard of a bank split across ranks without its rounds.
            ValueError: If a sharded round gets more queries than its rows.
        """
        k = min(k, self.size)
        if self.rounds is not None:
            queries = queries.to(self.rounds.dtype)
            return sharded_neighbours(
                queries, self.features, self.labels, k, self.rounds.rows, distance_metric,
                chunk_size, shard_keys=self.keys,
            )  # fmt: skip
        if self.size != self.features.shape[0]:
            raise RuntimeError(
                "this KNNBank is one rank's shard of a bank split across ranks: give it the "
                "rounds every rank agreed on (bank.in_rounds(agree_on_rounds(...)))"
            )
        return knn_neighbours(queries, self.features, self.labels, k, distance_metric, chunk_size)


def knn_bank(
    features: Tensor,
    labels: Tensor,
    num_classes: int | None = None,
    *,
    sharded: bool = False,
    keys: Tensor | None = None,
    where: str = "labels",
) -> KNNBank:
    """The rows of ``features`` that vote: those with a label ``>= 0`` and finite features.

    Reading which rows those are costs one host sync, whatever the number of rows; with
    ``sharded`` one small collective too. Rows keep their order.

    Args:
        features: ``(N, D)`` bank rows, any float dtype.
        labels: ``(N,)`` (or ``(N, 1)``) integer labels; a negative label marks an unlabelled
            row, which does not vote.
        num_classes: Number of classes; ``None`` infers it from the largest label (over
            every rank when ``sharded``): ``largest + 1``, 0 for a bank without labels.
        sharded: ``features`` is this rank's shard of a bank split across ranks: ``size``,
            the largest label and ``non_finite`` are taken over every rank (every rank must
            call together), and the bank is searched in rounds (:meth:`KNNBank.in_rounds`).
        keys: With ``sharded``, ``(N,)`` each row's position in the whole bank when the ranks
            do not hold it in rank order (see :func:`spt_knn.sharded_neighbours`); ignored
            without ``sharded``.
        where: What to name in the error for a label ``>= num_classes``.

    Returns:
        The :class:`KNNBank`.

    Raises:
        ValueError: For a ``features`` that is not 2-D, a label count that is not one per
            row, a ``num_classes`` below 1, a label ``>= num_classes`` or ``keys`` that are
            not one per row.
        TypeError: If ``features``, ``labels`` or ``keys`` is not a tensor, ``labels`` or
            ``keys`` not an integer tensor, ``num_classes`` not an int or ``sharded`` not a
            bool.

    Example:
        >>> rows = torch.tensor([[0.0], [1.0], [float("nan")], [3.0]])
        >>> bank = knn_bank(rows, torch.tensor([1, -1, 0, 2]))
        >>> bank.features.flatten().tolist(), bank.labels.tolist(), bank.num_classes
        ([0.0, 3.0], [1, 2], 3)
        >>> bank.size, bank.non_finite
        (2, 1)
    """
    for argument, value in (("features", features), (where, labels)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{argument} must be a torch.Tensor, got {type(value).__name__}")
    labels = labels.reshape(-1)
    if features.dim() != 2 or labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"features (N, D) and {where} (N,) must hold one label per bank row, got "
            f"{tuple(features.shape)} and {labels.shape[0]} labels"
        )
    if labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"{where} must be an integer tensor, got {labels.dtype}")
    if num_classes is not None:
        positive_int(num_classes, "num_classes")
    if not isinstance(sharded, bool):
        raise TypeError(f"knn_bank: sharded must be a bool, got {sharded!r}")
    if keys is not None:
        integer_rows(keys, features.shape[0], "knn_bank: keys", "features")
    finite = finite_rows(features)
    labels = torch.where(finite, labels.long(), -1)
    summary = torch.stack(((labels >= 0).sum(), _largest(labels), (~finite).sum()))
    per_rank = distributed.gather_uneven(summary[None]) if sharded else summary[None]
    counts, tops, non_finite = per_rank.T.tolist()  # the one host sync
    top = max(tops)
    if num_classes is None:
        num_classes = top + 1
    else:
        check_label_range(top, num_classes, where)
    here = counts[distributed.rank()] if sharded else counts[0]
    if keys is not None and sharded:
        keys = keep_labelled(keys[:, None], labels, here)[0][:, 0]
    features, labels = keep_labelled(features, labels, here)
    size, dropped = sum(counts), sum(non_finite)
    return KNNBank(features, labels, num_classes, size, dropped, keys=keys if sharded else None)


def _largest(labels: Tensor) -> Tensor:
    return labels.max() if labels.numel() else labels.new_tensor(-1)


def keep_labelled(bank: Tensor, labels: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """The rows of ``bank`` whose label is ``>= 0``, in their original order.

    Args:
        bank: ``(N, D)`` rows.
        labels: ``(N,)`` labels; negative ones mark unlabelled rows.
        count: How many labels are ``>= 0``; passing it keeps the selection free of another
            host sync.

    Returns:
        ``(bank, labels)`` restricted to the ``count`` labelled rows (the inputs themselves
        when every row is labelled).

    Example:
        >>> labels = torch.tensor([1, -1, 0, -1])
        >>> bank, labels = keep_labelled(torch.arange(4.0)[:, None], labels, count=2)
        >>> bank.flatten().tolist(), labels.tolist()
        ([0.0, 2.0], [1, 0])
    """
    if count == labels.shape[0]:
        return bank, labels
    order = torch.argsort((labels < 0).to(torch.int8), stable=True)[:count]
    return bank.index_select(0, order), labels.index_select(0, order)
