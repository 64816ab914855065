"""Which step outputs each metric needs: the pure resolution behind ``MetricsCallback(needs=...)``.

A *source* is either the name of a step output (looked up with :func:`spt_core.lookup`) or a
callable that receives the whole outputs dict. ``needs`` takes one of four forms:

- ``None``: every metric asks for its *required* parameters (those without a default) by name;
- a list of sources: the positional arguments of every metric;
- a dict ``{parameter: source}``: the keyword arguments of every metric;
- a dict ``{metric_name: list | dict}``: per-metric overrides; metrics it does not name are
  inferred as with ``None``.

Everything here is a pure function of the metrics and of ``needs``, checked once at
construction, so that a mistake surfaces before the first training step.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from spt_core import lookup
from spt_metrics._needs_forms import NeedsSpec, NeedsType, Source, check_spec, split_needs

__all__ = [
    "Needs",
    "NeedsSpec",
    "NeedsType",
    "Source",
    "arguments",
    "bind_needs",
    "fetch",
    "index_sources",
    "infer_needs",
    "resolve_needs",
    "signature",
    "split_needs",
]

_NAMED = (
    inspect.Parameter.POSITIONAL_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    inspect.Parameter.KEYWORD_ONLY,
)


@dataclass(frozen=True)
class Needs:
    """Where each argument of one metric comes from.

    Args:
        args: Sources of the positional arguments, in order (or their positions in a list of
            sources, see :func:`index_sources`).
        kwargs: Sources (or positions) of the keyword arguments.

    Example:
        >>> Needs(args=("logits",), kwargs={"target": "labels"}).sources()
        ['logits', 'labels']
    """

    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def sources(self) -> list[Source]:
        """Every source, positional ones first."""
        return [*self.args, *self.kwargs.values()]


def signature(metric: Any) -> inspect.Signature | None:
    """The signature a metric is called with, ``None`` when Python cannot tell.

    For objects with ``update`` and ``compute`` (torchmetrics ``Metric``) it is the signature
    of ``update``, read from the class so that torchmetrics' wrapper does not hide it.

    Example:
        >>> signature(lambda y_true, y_pred, *, normalize=True: 0)
        <Signature (y_true, y_pred, *, normalize=True)>
    """
    if callable(getattr(metric, "update", None)) and callable(getattr(metric, "compute", None)):
        update = getattr(type(metric), "update", None)
        try:
            unbound = inspect.signature(update)
        except (TypeError, ValueError):
            return None
        parameters = list(unbound.parameters.values())[1:]  # drop ``self``
        return unbound.replace(parameters=parameters)
    try:
        return inspect.signature(metric)
    except (TypeError, ValueError):
        return None


def infer_needs(metric: Any, *, name: str) -> Needs:
    """Ask for the metric's required parameters by their own names.

    Parameters with a default are left to the metric: ``accuracy_score(y_true, y_pred, *,
    normalize=True, sample_weight=None)`` needs exactly ``y_true`` and ``y_pred``.
    Positional-only parameters are passed positionally, the others by keyword.

    Args:
        metric: A function, a callable object, or an object with ``update``/``compute``.
        name: The metric's name, for error messages.

    Returns:
        The :class:`Needs` whose sources are the parameter names.

    Raises:
        ValueError: If the signature cannot be read, or if it names no required parameter
            (``f(*arrays)``, ``f(**kwargs)``, ``f(x=None)``): which outputs to pass is then
            ambiguous and ``needs`` must say it.

    Example:
        >>> def score(y_true, y_pred, /, sample_weight=None, *, average="macro"):
        ...     return 0.0
        >>> infer_needs(score, name="score")
        Needs(args=('y_true', 'y_pred'), kwargs={})
    """
    sig = signature(metric)
    if sig is None:
        raise ValueError(
            f"cannot infer the needs of metric {name!r}: Python cannot read the signature "
            f"of {metric!r}; pass needs={{{name!r}: [...]}} (or a list/dict for every metric)"
        )
    required = [p for p in sig.parameters.values() if p.kind in _NAMED and p.default is p.empty]
    if not required:
        raise ValueError(
            f"cannot infer the needs of metric {name!r}: its signature {sig} has no required "
            f"named parameter, so which outputs it takes is ambiguous; pass "
            f"needs={{{name!r}: [...]}} (or a list/dict for every metric)"
        )
    positional = tuple(p.name for p in required if p.kind is p.POSITIONAL_ONLY)
    keywords = {p.name: p.name for p in required if p.kind is not p.POSITIONAL_ONLY}
    return Needs(args=positional, kwargs=keywords)


def bind_needs(metric: Any, spec: NeedsSpec | None, *, name: str) -> Needs:
    """Turn one metric's spec into :class:`Needs`, checked against the metric's signature.

    Args:
        metric: The metric.
        spec: A list (positional sources), a dict (keyword sources) or ``None`` (infer).
        name: The metric's name, for error messages.

    Returns:
        The metric's :class:`Needs`.

    Raises:
        TypeError: If the metric cannot be called with these arguments (too many, too few, an
            unknown keyword); the message shows the signature.
        ValueError: See :func:`infer_needs`.

    Example:
        >>> def alignment(z1, z2, alpha=2):
        ...     return 0.0
        >>> bind_needs(alignment, {"z1": "Z1", "z2": "Z2"}, name="alignment")
        Needs(args=(), kwargs={'z1': 'Z1', 'z2': 'Z2'})
        >>> bind_needs(alignment, ["Z1"], name="alignment")
        Traceback (most recent call last):
        ...
        TypeError: metric 'alignment' cannot take needs ['Z1'] (signature (z1, z2, alpha=2)): ...
    """
    if spec is None:
        return infer_needs(metric, name=name)
    check_spec(spec, f"needs[{name!r}]")
    needs = Needs(kwargs=dict(spec)) if isinstance(spec, Mapping) else Needs(args=tuple(spec))
    sig = signature(metric)
    if sig is not None:
        try:
            sig.bind(*needs.args, **needs.kwargs)
        except TypeError as error:
            shown = dict(spec) if isinstance(spec, Mapping) else list(spec)
            raise TypeError(
                f"metric {name!r} cannot take needs {shown!r} (signature {sig}): {error}"
            ) from None
    return needs


def resolve_needs(metrics: Mapping[str, Any], needs: Any = None) -> dict[str, Needs]:
    """Resolve ``needs`` for every metric of ``{name: metric}``.

    Args:
        metrics: ``{name: metric}``, a metric being a callable or a torchmetrics ``Metric``.
        needs: One of the four forms of the module docstring (``None``: infer every metric's
            required parameters).

    Returns:
        ``{name: Needs}`` in the order of ``metrics``: the sources each metric is called with.

    Raises:
        TypeError: If ``metrics`` is not a mapping, or ``needs`` has no accepted form.
        ValueError: If ``needs`` names no metric or does not fit a metric's signature.

    Example:
        >>> def accuracy(y_true, y_pred, *, normalize=True):
        ...     return 0.0
        >>> resolve_needs({"acc": accuracy})
        {'acc': Needs(args=(), kwargs={'y_true': 'y_true', 'y_pred': 'y_pred'})}
        >>> resolve_needs({"acc": accuracy}, {"accuracy": ["t", "p"]})
        Traceback (most recent call last):
        ...
        ValueError: needs overrides ['accuracy'], which name no metric; the metrics are ['acc']
    """
    if not isinstance(metrics, Mapping):
        raise TypeError(f"resolve_needs: metrics must be a dict {{name: metric}}, got {metrics!r}")
    specs = split_needs(list(metrics), needs)
    return {name: bind_needs(metric, specs[name], name=name) for name, metric in metrics.items()}


def fetch(source: Source, outputs: Any, batch: Any, *, owner: str) -> Any:
    """The value of one source: ``outputs[key]`` (else ``batch[key]``) or ``source(outputs)``.

    Raises:
        KeyError: If a key is in neither; the message names ``owner`` and lists the keys.

    Example:
        >>> fetch("y", {"y": 1}, None, owner="demo"), fetch(len, {"y": 1}, None, owner="demo")
        (1, 1)
    """
    if isinstance(source, str):
        return lookup(source, outputs, batch, owner=owner)
    return source(outputs)


def index_sources(needs: Mapping[str, Needs]) -> tuple[list[Source], dict[str, Needs]]:
    """Number the distinct sources of several metrics, so that each is fetched once per step.

    Output keys are the same source when equal, callables when identical.

    Args:
        needs: ``{metric_name: Needs}``.

    Returns:
        ``(sources, indexed)``: the distinct sources in first-use order, and every metric's
        :class:`Needs` rewritten with positions in ``sources`` instead of sources.

    Example:
        >>> sources, indexed = index_sources(
        ...     {"acc": Needs(args=("p", "t")), "f1": Needs(kwargs={"preds": "p", "target": "t"})}
        ... )
        >>> sources, indexed["f1"]
        (['p', 't'], Needs(args=(), kwargs={'preds': 0, 'target': 1}))
    """
    sources: list[Source] = []
    positions: dict[Any, int] = {}

    def position(source: Source) -> int:
        key = source if isinstance(source, str) else ("callable", id(source))
        if key not in positions:
            positions[key] = len(sources)
            sources.append(source)
        return positions[key]

    indexed = {
        name: Needs(
            args=tuple(position(s) for s in spec.args),
            kwargs={key: position(s) for key, s in spec.kwargs.items()},
        )
        for name, spec in needs.items()
    }
    return sources, indexed


def arguments(indexed: Needs, values: Sequence[Any]) -> tuple[list[Any], dict[str, Any]]:
    """The ``(args, kwargs)`` of one metric call from the values of the indexed sources.

    Example:
        >>> arguments(Needs(args=(1,), kwargs={"target": 0}), ["t", "p"])
        (['p'], {'target': 't'})
    """
    return [values[i] for i in indexed.args], {k: values[i] for k, i in indexed.kwargs.items()}
