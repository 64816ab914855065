"""Names for metric objects: readable, unique, and keyed as the callbacks log them."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from typing import Any

_TASK_PREFIX = re.compile(r"^(multiclass|multilabel|binary)_")


def metric_name(metric: Any) -> str:
    """A readable snake_case name for a metric object, class or function.

    torchmetrics' task prefixes are dropped (``MulticlassAccuracy`` -> ``accuracy``) and a
    ``top_k`` above 1 is kept in the name, so top-1 and top-5 accuracy stay apart.

    Args:
        metric: A metric object (named by its class), a class or function (by its
            ``__name__``), or a ``functools.partial`` (by the function it wraps).

    Returns:
        The snake_case name, ``"lambda"`` for a lambda.

    Example:
        >>> import functools, operator
        >>> metric_name(operator.add), metric_name(functools.partial(operator.add, 1))
        ('add', 'add')
        >>> metric_name(lambda x: x)
        'lambda'
    """
    if isinstance(metric, functools.partial):
        return metric_name(metric.func)
    raw = getattr(metric, "__name__", None) or type(metric).__name__
    if raw == "<lambda>":
        return "lambda"
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", raw).lower()
    snake = _TASK_PREFIX.sub("", snake)
    top_k = getattr(metric, "top_k", None)
    if isinstance(top_k, int) and top_k > 1:
        snake = f"{snake}_top{top_k}"
    return snake


def unique_names(names: Iterable[str]) -> list[str]:
    """Make names unique by suffixing repeats with ``_2``, ``_3``...

    Args:
        names: The names, in order; the first of a repeated name keeps it unchanged.

    Returns:
        A new list, as long as ``names``, with no name twice.

    Raises:
        TypeError: If ``names`` is not an iterable of strings.

    Example:
        >>> unique_names(["acc", "acc", "f1", "acc"])
        ['acc', 'acc_2', 'f1', 'acc_3']
    """
    given = names
    names = list(names) if isinstance(names, Iterable) and not isinstance(names, str) else None
    if names is None or not all(isinstance(name, str) for name in names):
        raise TypeError(f"unique_names: names must be an iterable of strings, got {given!r}")
    taken: dict[str, None] = {}  # an ordered set
    for name in names:
        candidate, count = name, 1
        while candidate in taken:
            count += 1
            candidate = f"{name}_{count}"
        taken[candidate] = None
    return list(taken)


def named_metrics(metrics: Any, *, owner: str, argument: str = "metrics") -> dict[str, Any]:
    """Normalise a dict, list, tuple, single metric or ``None`` into a new ``{name: metric}``.

    Args:
        metrics: What the user passed; entries of a list or tuple, or a single metric, are
            named by :func:`metric_name` and made unique.
        owner: Who asks, for error messages.
        argument: The argument's name, for error messages.

    Returns:
        A new dict: a mapping's own keys, or the generated names in the given order; empty
        for ``None``.

    Raises:
        TypeError: If a key is not a string.
        ValueError: If a key is empty or contains ``/``.

    Example:
        >>> import operator
        >>> sorted(named_metrics([operator.add, operator.add], owner="demo"))
        ['add', 'add_2']
    """
    if metrics is None:
        return {}
    if isinstance(metrics, Mapping):
        for key in metrics:
            if not isinstance(key, str):
                raise TypeError(f"{owner}: {argument} keys must be strings, got {key!r}")
            if not key or "/" in key:
                raise ValueError(
                    f"{owner}: {argument} keys must be non-empty without '/', got {key!r}"
                )
        return dict(metrics)
    items = list(metrics) if isinstance(metrics, (list, tuple)) else [metrics]
    return dict(zip(unique_names(metric_name(m) for m in items), items, strict=True))
