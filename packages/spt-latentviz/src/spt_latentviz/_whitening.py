"""The whitening of LatentViz's rows, and the whitened copy of the rows its projection trains on.

The map is ``map_gain * projection((rows - centre) @ transform)``. The ``D x D`` product often
costs more than the projection itself, but its inputs rarely change: the rows of an update are
the neighbour graph's, re-read only when the graph is rebuilt (and then mostly rows seen
before), and the scaling changes only when it is agreed or a map is drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

Scaling = tuple[Tensor, Tensor]
"""``(centre, transform)``: see :func:`~spt_latentviz.alignment.feature_scaling`."""

BLOCK_ROWS = 64
"""Rows per matrix product of :func:`whiten_in_blocks`: few enough that the partly filled
blocks at either end cost little, enough that a product still runs near full speed."""


def whiten(rows: Tensor, scaling: Scaling | None) -> Tensor:
    """``(rows - centre) @ transform`` in the dtype and on the device of ``rows``.

    Args:
        rows: Shape ``(N, D)``.
        scaling: ``(centre, transform)`` of shapes ``(D,)`` and ``(D, D)``, or ``None``.

    Returns:
        The whitened rows, ``(N, D)``; ``rows`` itself when ``scaling`` is ``None``.

    Example:
        >>> rows = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
        >>> whiten(rows, (torch.tensor([2.0, 4.0]), torch.eye(2) / 2)).tolist()
        [[-0.5, -1.0], [0.5, 1.0]]
    """
    if scaling is None:
        return rows
    centre, transform = (t.to(rows.device, rows.dtype) for t in scaling)
    return (rows - centre) @ transform


def whiten_in_blocks(rows: Tensor, scaling: Scaling | None, start: int = 0) -> Tensor:
    """:func:`whiten` of ``rows``, the rows number ``start``, ``start + 1``, ... of a stream,
    one matrix product per block of :data:`BLOCK_ROWS` stream positions.

    A row of a matrix product can round differently in a product of another height, but not
    when only the other rows change. Here every row is whitened in a product of the same
    height, at the same place in it, whichever rows are whitened with it: a row's result
    depends on its value and its position in the stream only, so a part of the stream can be
    whitened now and the rest later, bit for bit as if whitened together.

    Args:
        rows: Shape ``(N, D)``.
        scaling: ``(centre, transform)``, or ``None`` (then ``rows`` is returned).
        start: The stream position of ``rows[0]``.

    Returns:
        The whitened rows, ``(N, D)``, equal to :func:`whiten`'s up to rounding.

    Example:
        >>> rows, scaling = torch.randn(100, 3), (torch.zeros(3), torch.randn(3, 3))
        >>> together = whiten_in_blocks(rows, scaling)
        >>> torch.equal(whiten_in_blocks(rows[70:], scaling, start=70), together[70:])
        True
    """
    if scaling is None:
        return rows
    centre, transform = (t.to(rows.device, rows.dtype) for t in scaling)
    white = torch.empty_like(rows)
    block = rows.new_zeros(BLOCK_ROWS, rows.shape[1])
    end = start + len(rows)
    for at in range(start - start % BLOCK_ROWS, end, BLOCK_ROWS):
        lo, hi = max(at, start), min(at + BLOCK_ROWS, end)
        block[lo - at : hi - at] = rows[lo - start : hi - start]
        white[lo - start : hi - start] = ((block - centre) @ transform)[lo - at : hi - at]
    return white


@dataclass(frozen=True)
class _Whitened:
    rows: Tensor
    scaling: Scaling
    white: Tensor
    source: object | None  # the queue the rows were read from, when they are consecutive
    start: int  # the stream position of ``rows[0]`` in ``source`` (0 without one)


class WhitenedRows:
    """The whitened copy of the rows the projection trains on, kept from one update to the next.

    :meth:`whiten` returns :func:`whiten_in_blocks` of its rows, and computes only what its
    last call did not:

    - the same ``rows`` and ``scaling`` objects as last time (the rows of an unchanged
      neighbour graph): nothing, the same tensor as before;
    - a later read of the same queue (:meth:`place`) under the same scaling: only the rows
      appended since; the others are copied from the last result;
    - anything else (a new scaling, other rows, another dtype or device): every row.

    Every result is bit for bit the one a fresh :func:`whiten_in_blocks` gives (so a resumed
    run, whose first update whitens every row, continues exactly). Holds no state a checkpoint
    needs.

    Example:
        >>> cache, rows = WhitenedRows(), torch.randn(5, 3)
        >>> scaling = (rows.mean(dim=0), torch.eye(3))
        >>> cache.whiten(rows, scaling) is cache.whiten(rows, scaling)
        True
    """

    def __init__(self) -> None:
        self._placed: tuple[Tensor, object, int] | None = None
        self._last: _Whitened | None = None

    def clear(self) -> None:
        """Forget the whitened rows (not where the rows were read: that still holds)."""
        self._last = None

    def reset(self) -> None:
        """Forget everything (the rows will be read again)."""
        self._placed = self._last = None

    def place(self, rows: Tensor, source: object, start: int | None) -> None:
        """Note that ``rows`` are the rows ``source`` appended at stream positions ``start``,
        ``start + 1``, ... (``start=None``: not consecutive rows, e.g. some were left out)."""
        self._placed = None if start is None else (rows, source, start)

    @torch.no_grad()
    def whiten(self, rows: Tensor, scaling: Scaling | None) -> Tensor:
        """:func:`whiten_in_blocks` of ``rows``, reusing the last call's result where it holds."""
        if scaling is None:
            return rows
        last = self._last
        if last is not None and last.rows is rows and last.scaling is scaling:
            return last.white
        placed = self._placed
        source, start = (placed[1], placed[2]) if placed and placed[0] is rows else (None, 0)
        kept = 0 if last is None else _rows_held(last, rows, scaling, source, start)
        if last is not None and kept:
            offset = start - last.start
            fresh = whiten_in_blocks(rows[kept:], scaling, start + kept)
            white = torch.cat((last.white[offset : offset + kept], fresh))
        else:
            white = whiten_in_blocks(rows, scaling, start)
        self._last = _Whitened(rows, scaling, white, source, start)
        return white


def _rows_held(last: _Whitened, rows: Tensor, scaling: Scaling, source: object, start: int) -> int:
    """How many leading rows of ``rows`` ``last`` holds whitened under ``scaling``."""
    if source is None or last.source is not source or last.scaling is not scaling:
        return 0
    old = last.rows
    if start < last.start or (old.dtype, old.device, old.shape[1:]) != (
        rows.dtype,
        rows.device,
        rows.shape[1:],
    ):
        return 0
    return max(0, min(last.start + len(old), start + len(rows)) - start)
