"""Several ``k`` and temperatures scored from one search: the pairs of a kNN sweep."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from spt_core.checks import positive_int

Pair = tuple[int, float]
"""A ``(k, temperature)`` pair of a sweep."""


@dataclass(frozen=True)
class Sweep:
    """The ``k`` values and temperatures of a kNN evaluation, made by :func:`parse_sweep`.

    Every pair ``(k, T)`` is voted from the neighbours of one search at :attr:`largest_k`
    (the first ``k`` columns of its distance-sorted neighbours).

    Args:
        ks: The ``k`` values, in the order given.
        temperatures: The temperatures, as floats, in the order given.
        swept: Whether ``k`` or ``temperature`` was given as a tuple or list (results are then
            keyed by pair and logged names carry :meth:`suffix`).

    Example:
        >>> sweep = parse_sweep((20, 10), 0.07)
        >>> sweep.ks, sweep.temperatures, sweep.swept, sweep.largest_k
        ((20, 10), (0.07,), True, 20)
        >>> sweep.pairs
        [(20, 0.07), (10, 0.07)]
    """

    ks: tuple[int, ...]
    temperatures: tuple[float, ...]
    swept: bool

    @property
    def pairs(self) -> list[Pair]:
        """Every ``(k, T)``, ``k``-major, in the order given."""
        return [(k, t) for k in self.ks for t in self.temperatures]

    @property
    def largest_k(self) -> int:
        """The ``k`` of the one search."""
        return max(self.ks)

    def suffix(self, pair: Pair) -> str:
        """What a logged name of ``pair`` ends with: ``""`` for scalar arguments,
        ``"_k{k}"`` for a sweep, and ``"_t{T}"`` after it when several temperatures are given
        (``T`` as Python's shortest round-trip ``repr`` of the float: ``0.07`` -> ``t0.07``,
        ``1`` -> ``t1.0``, ``1e-5`` -> ``t1e-05``; distinct temperatures never share a name).

        Example:
            >>> parse_sweep((10, 20), (0.07, 0.1)).suffix((20, 0.07))
            '_k20_t0.07'
            >>> parse_sweep((10, 20), 0.07).suffix((10, 0.07)), parse_sweep(5, 0.1).suffix((5, 0.1))
            ('_k10', '')
        """
        if not self.swept:
            return ""
        k, temperature = pair
        return f"_k{k}" + (f"_t{temperature!r}" if len(self.temperatures) > 1 else "")


def parse_sweep(
    k: int | Sequence[int], temperature: float | Sequence[float], *, owner: str | None = None
) -> Sweep:
    """Check ``k`` and ``temperature``, each a scalar or a non-empty tuple/list of distinct
    values, and return the :class:`Sweep` they describe.

    Args:
        k: Neighbours per vote, or a tuple/list of distinct values.
        temperature: Temperature of the vote, or a tuple/list of distinct values.
        owner: Who asks (a callback's ``state_key``), named first in the messages.

    Returns:
        The :class:`Sweep`; its ``swept`` is set when either argument is a tuple or list.

    Raises:
        TypeError: If ``k`` is not an int (or a tuple/list of them), or ``temperature`` not a
            number (or a tuple/list of them).
        ValueError: If a tuple/list is empty or holds duplicates, a ``k`` is below 1, or a
            temperature is not a finite number ``> 0``; the message names the argument.

    Example:
        >>> parse_sweep((10, 20, 200), (0.07, 0.1)).pairs[:3]
        [(10, 0.07), (10, 0.1), (20, 0.07)]
        >>> parse_sweep((10, 10), 0.1)
        Traceback (most recent call last):
        ...
        ValueError: k must not repeat a value, got (10, 10)
        >>> parse_sweep("5", 0.1, owner="OnlineKNN[name=knn]")
        Traceback (most recent call last):
        ...
        TypeError: OnlineKNN[name=knn]: k must be an integer >= 1, got '5'
    """
    prefix = f"{owner}: " if owner else ""
    ks = _values(k, f"{prefix}k", positive_int)
    temperatures = _values(temperature, f"{prefix}temperature", check_temperature)
    swept = isinstance(k, (tuple, list)) or isinstance(temperature, (tuple, list))
    return Sweep(tuple(ks), tuple(float(t) for t in temperatures), swept)


def _values(given: object, argument: str, check) -> list:
    if not isinstance(given, (tuple, list)):
        return [check(given, argument)]
    if not given:
        raise ValueError(
            f"{argument} must be a value or a non-empty tuple/list of values, got {given!r}"
        )
    values = [check(value, f"{argument}[{i}]") for i, value in enumerate(given)]
    if len(set(values)) != len(values):
        raise ValueError(f"{argument} must not repeat a value, got {given!r}")
    return values


def check_temperature(value: object, argument: str = "temperature") -> float:
    """``value`` as a float if it is a finite number ``> 0``.

    Raises:
        TypeError: If it is not a number.
        ValueError: If it is not finite or not positive.
    """
    message = f"{argument} must be a finite number > 0, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(message)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(message)
    return float(value)
