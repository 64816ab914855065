"""What the optimizer and the scheduler factories share: classes by name, constructor checks."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import Tensor


def registry(module: Any, base: type) -> dict[str, type]:
    """The public subclasses of ``base`` defined in ``module``, by name, ``base`` left out."""
    found = {
        name: obj
        for name, obj in vars(module).items()
        if isinstance(obj, type) and issubclass(obj, base) and not name.startswith("_")
    }
    found.pop(base.__name__, None)
    return found


def by_name(name: str, known: dict[str, type], kind: str, argument: str) -> type:
    """The class called ``name`` in ``known``: an exact match, else a unique case-insensitive one.

    Raises:
        ValueError: If no class has that name; the message lists the known ones.
    """
    if name in known:
        return known[name]
    folded = [k for k in known if k.lower() == name.lower()]
    if len(folded) == 1:
        return known[folded[0]]
    raise ValueError(f"{argument}={name!r} is not a known {kind}; known: {sorted(known)}")


def check_kwargs(cls: type, kwargs: Mapping[str, Any], provided: tuple[str, ...], where: str):
    """Bind ``kwargs`` to ``cls``'s constructor, its first argument and ``provided`` aside.

    Raises:
        TypeError: For an argument ``cls`` does not take, or a required one left out.
    """
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        return
    params = list(signature.parameters.values())[1:]
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in params)
    names = {p.name for p in params}
    unknown = sorted(set(kwargs) - names)
    if unknown and not accepts_any:
        raise TypeError(
            f"{where}: {cls.__name__} takes no argument(s) {unknown}; "
            f"it takes {sorted(n for n in names if n not in ('args', 'kwargs'))}"
        )
    missing = [
        p.name
        for p in params
        if p.default is p.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.name not in kwargs
        and p.name not in provided
    ]
    if missing:
        raise TypeError(
            f"{where}: {cls.__name__} needs {missing}; pass them in a dict "
            f"{{'type': {cls.__name__!r}, ...}} or use a functools.partial"
        )


def split_type(spec: Mapping[str, Any], argument: str, resolve: Callable[[str, str], type]):
    """``(class, kwargs)`` of a ``{"type": name_or_class, **kwargs}`` dict.

    Raises:
        ValueError: For a dict without ``'type'``.
        TypeError: For a ``'type'`` that is neither a name nor a class.
    """
    if "type" not in spec:
        raise ValueError(f"{argument} dict needs a 'type' key (a name or a class), got {spec!r}")
    kind = spec["type"]
    cls = resolve(kind, argument) if isinstance(kind, str) else kind
    if not isinstance(cls, type):
        raise TypeError(f"{argument}['type'] must be a name or a class, got {kind!r}")
    return cls, {k: v for k, v in spec.items() if k != "type"}


def built(value: Any, expected: type, spec: Any, argument: str, given: str, what: str) -> Any:
    """``value``, which calling ``spec`` with ``given`` returned, if it is an ``expected``.

    Raises:
        TypeError: Naming ``argument``, ``spec`` and what it returned instead of ``what``.
    """
    if not isinstance(value, expected):
        raise TypeError(
            f"{argument}: calling {spec!r} with {given} returned {type(value).__name__}, not {what}"
        )
    return value


def check_params(params: Any, argument: str) -> None:
    """Raise unless ``params`` is an iterable (not a single tensor) of what an optimizer
    takes: parameters or parameter groups (torch checks the entries).

    Raises:
        TypeError: Naming ``argument`` and what was given.

    Example:
        >>> check_params(3, "params")
        Traceback (most recent call last):
        ...
        TypeError: params must be an iterable of parameters or parameter groups (dicts), got int
    """
    if isinstance(params, Tensor) or not isinstance(params, Iterable):
        raise TypeError(
            f"{argument} must be an iterable of parameters or parameter groups (dicts), got "
            f"{type(params).__name__}"
        )
