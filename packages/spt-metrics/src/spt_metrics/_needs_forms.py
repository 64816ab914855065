"""The forms ``needs`` takes, checked and split into one spec per metric (see
:mod:`spt_metrics.needs`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

Source = str | Callable[[Any], Any]
NeedsSpec = Sequence[Source] | Mapping[str, Source]
NeedsType = NeedsSpec | Mapping[str, NeedsSpec] | None

__all__ = ["NeedsSpec", "NeedsType", "Source", "check_spec", "split_needs"]


def _is_source(value: Any) -> bool:
    return isinstance(value, str) or callable(value)


def _is_spec(value: Any) -> bool:
    return isinstance(value, (list, tuple, Mapping))


def check_spec(spec: Any, where: str) -> None:
    """Check one metric's spec: a list of sources or a dict ``{parameter: source}``.

    Raises:
        TypeError: Naming ``where`` and the entry that is neither a key nor a callable.
    """
    if isinstance(spec, Mapping):
        items = spec.items()
    elif isinstance(spec, (list, tuple)):
        items = enumerate(spec)
    else:
        raise TypeError(
            f"{where} must be a list of sources or a dict {{parameter: source}}, got {spec!r}"
        )
    for key, source in items:
        if isinstance(spec, Mapping) and not isinstance(key, str):
            raise TypeError(f"{where}: parameter names must be strings, got {key!r}")
        if not _is_source(source):
            raise TypeError(
                f"{where}[{key!r}] must be an output key (str) or a callable of the outputs "
                f"dict, got {source!r}"
            )


def split_needs(names: Sequence[str], needs: Any) -> dict[str, NeedsSpec | None]:
    """Assign every metric its own ``needs`` spec (``None`` = infer), checking the form.

    Args:
        names: The metric names (dict keys or inferred names).
        needs: What the user passed.

    Returns:
        ``{metric_name: list | dict | None}``.

    Raises:
        ValueError: If a per-metric override names no metric (the message lists the metric
            names), or if a dict mixes sources and per-metric specs, or if a keyword dict uses
            a metric name as a parameter name (ambiguous: write ``{name: [...]}`` for an
            override).
        TypeError: If ``needs`` or one of its entries has the wrong type.

    Example:
        >>> split_needs(["acc", "align"], {"align": {"z1": "Z1", "z2": "Z2"}})
        {'acc': None, 'align': {'z1': 'Z1', 'z2': 'Z2'}}
        >>> split_needs(["acc"], ["logits", "labels"])
        {'acc': ['logits', 'labels']}
    """
    if needs is None:
        return dict.fromkeys(names)
    if isinstance(needs, (list, tuple)):
        check_spec(needs, "needs")
        return {name: list(needs) for name in names}
    if not isinstance(needs, Mapping):
        raise TypeError(
            "needs must be None, a list of sources, a dict {parameter: source} or a dict "
            f"{{metric_name: list | dict}}, got {type(needs).__name__} {needs!r}"
        )
    specs = [key for key, value in needs.items() if _is_spec(value)]
    sources = [key for key, value in needs.items() if not _is_spec(value)]
    if specs and sources:
        raise ValueError(
            f"needs is ambiguous: {specs} map to lists/dicts (per-metric overrides) while "
            f"{sources} map to single sources (keyword arguments for every metric); use one "
            "form only"
        )
    if sources:
        check_spec(needs, "needs")
        clash = [key for key in needs if key in names]
        if clash:
            raise ValueError(
                f"needs is ambiguous: {clash} are metric names, but a dict of single sources "
                "gives keyword arguments to every metric; for a per-metric override write "
                f"{{{clash[0]!r}: [...]}} or {{{clash[0]!r}: {{parameter: source}}}}"
            )
        return {name: dict(needs) for name in names}
    unknown = [key for key in needs if key not in names]
    if unknown:
        raise ValueError(
            f"needs overrides {unknown}, which name no metric; the metrics are {list(names)}"
        )
    for key, spec in needs.items():
        check_spec(spec, f"needs[{key!r}]")
    return {name: _copy_spec(needs.get(name)) for name in names}


def _copy_spec(spec: Any) -> NeedsSpec | None:
    if spec is None:
        return None
    return dict(spec) if isinstance(spec, Mapping) else list(spec)
