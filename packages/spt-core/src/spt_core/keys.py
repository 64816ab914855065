"""Resolve a named entry from what a Lightning step returned or from its batch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def lookup(key: str, outputs: Any, batch: Any, *, owner: str) -> Any:
    """Return ``outputs[key]`` if present, else ``batch[key]``.

    Step outputs are searched first so that a feature computed in ``training_step`` wins
    over a raw input of the same name.

    Args:
        key: The name to look up.
        outputs: What the step returned (a dict, a tensor, or ``None``).
        batch: The batch the step received (a dict, or anything else).
        owner: Who asks, for the error message (e.g. ``"OnlineKNN[name=knn]"``).

    Returns:
        The value found, as it is (no copy).

    Raises:
        TypeError: If ``key`` is not a string.
        KeyError: If neither holds ``key``; the message lists the keys that do exist.

    Example:
        >>> lookup("z", {"z": 1, "loss": 0}, {"z": 2, "y": 3}, owner="demo")
        1
        >>> lookup("y", {"z": 1}, {"y": 3}, owner="demo")
        3
    """
    if not isinstance(key, str):
        raise TypeError(f"{owner}: key must be a string, got {key!r}")
    for source in (outputs, batch):
        if isinstance(source, Mapping) and key in source:
            return source[key]
    raise KeyError(
        f"{owner} needs the key {key!r}, which is neither in the step outputs "
        f"(keys: {_keys(outputs)}) nor in the batch (keys: {_keys(batch)})"
    )


def _keys(source: Any) -> str:
    if isinstance(source, Mapping):
        return repr(sorted(map(str, source)))
    return f"none, it is a {type(source).__name__}"
