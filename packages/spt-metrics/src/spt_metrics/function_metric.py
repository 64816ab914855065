"""``FunctionMetric``: a plain function or a scikit-learn metric as a torchmetrics ``Metric``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors

from spt_core.checks import positive_int, string_key
from spt_metrics._convert import as_rows, batch_size, scalar, to_numpy

__all__ = ["FunctionMetric"]


class FunctionMetric(Metric):
    """Accumulate the inputs of a function over batches, the torchmetrics way.

    The function takes numpy arrays and returns a number (``sklearn.metrics.roc_auc_score``,
    a plain function). Its states are ordinary torchmetrics states, so torchmetrics
    synchronises them across ranks (uneven row counts included) and they can be saved:

    - *exact* mode (``per_step=False``): every argument's rows are kept in a list state
      reduced by concatenation; :meth:`compute` calls the function once on the concatenation
      over every batch and every rank. Positional arguments are the states ``arg_0``,
      ``arg_1``...; keyword arguments the states ``kwarg_{name}``.
    - *per-step* mode (``per_step=True``): the function runs on every batch and the metric
      keeps ``weighted_sum`` (batch size times value) and ``weight`` (batch sizes; the
      length of the first argument that has rows, else 1), both reduced by sum:
      :meth:`compute` is their ratio, ``nan`` without rows.

    The per-step states live on the CPU: the values come from the host anyway. Collectives
    run on the backend's device (CUDA for NCCL) and their results come back where the states
    were. Under DDP every rank must call :meth:`compute` together. A rank without any batch
    should first call :meth:`update` once with zero-row inputs of the right dtypes and
    shapes (``MetricsCallback`` does): torchmetrics cannot tell the dtype and the shape of
    an empty list state.

    Args:
        function: Called as ``function(*args, **kwargs)`` with numpy arrays.
        num_args: How many positional arguments :meth:`update` takes.
        keywords: The keyword arguments :meth:`update` takes.
        per_step: Per-step (``True``) or exact (``False``) mode.
        compute_on_cpu: In exact mode, move the rows to the CPU as they arrive (else they
            stay where they come from).
        name: How errors name the metric (default: the function's name).
        kwargs: Passed to torchmetrics' ``Metric`` (``process_group``...).

    Raises:
        TypeError: If ``function`` is not callable, ``num_args`` not an int, ``keywords`` not
            a tuple or list of strings, ``per_step`` or ``compute_on_cpu`` not a bool, ``name``
            neither a string nor ``None``, or if a call of :meth:`update` does not give
            exactly the declared arguments.
        ValueError: If ``num_args < 0``, a keyword is empty or repeated, ``name`` is empty,
            or, in exact mode, an argument is a scalar (it has no rows).

    Example:
        >>> def hits(preds, target):
        ...     return float((preds == target).mean())
        >>> exact = FunctionMetric(hits, keywords=("preds", "target"))
        >>> exact.update(preds=torch.tensor([1, 0, 2]), target=torch.tensor([1, 1, 2]))
        >>> exact.update(preds=torch.tensor([2]), target=torch.tensor([0]))
        >>> exact.compute()
        tensor(0.5000)
        >>> per_step = FunctionMetric(hits, num_args=2, per_step=True)
        >>> per_step.update(torch.tensor([1, 0, 2]), torch.tensor([1, 1, 2]))
        >>> per_step.update(torch.tensor([2]), torch.tensor([0]))
        >>> per_step.compute()  # (3 * 2/3 + 1 * 0) / 4
        tensor(0.5000)
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(
        self,
        function: Callable[..., Any],
        *,
        num_args: int = 0,
        keywords: Sequence[str] = (),
        per_step: bool = False,
        compute_on_cpu: bool = False,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        _check_arguments(function, num_args, keywords, per_step, compute_on_cpu, name)
        kwargs.setdefault("dist_sync_fn", _gather_on_backend_device)
        super().__init__(**kwargs)
        self._function = _Shared(function)
        self.num_args = num_args
        self.keywords = tuple(keywords)
        self.per_step = per_step
        self.keep_on_cpu = compute_on_cpu
        self.name = name or getattr(function, "__name__", type(function).__name__)
        if self.per_step:
            zero = torch.zeros((), dtype=torch.float64)
            self.add_state("weighted_sum", zero.clone(), dist_reduce_fx="sum")
            self.add_state("weight", zero.clone(), dist_reduce_fx="sum")
        else:
            for state in self._row_states():
                self.add_state(state, [], dist_reduce_fx="cat")

    @property
    def function(self) -> Callable[..., Any]:
        """The wrapped function (shared by every copy of this metric)."""
        return self._function.value

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Add one batch: tensors, numpy arrays or numbers, as declared."""
        if len(args) != self.num_args or set(kwargs) != set(self.keywords):
            raise TypeError(
                f"metric {self.name!r} takes {self.num_args} positional argument(s) and the "
                f"keywords {list(self.keywords)}, got {len(args)} and {sorted(kwargs)}"
            )
        values = [*args, *(kwargs[key] for key in self.keywords)]
        if self.per_step:
            arrays = [to_numpy(value) for value in values]
            value = self._call(arrays)
            weight = batch_size(arrays, {})
            self.weighted_sum += weight * value
            self.weight += weight
            return
        keep = torch.device("cpu") if self.keep_on_cpu else None
        for state, value in zip(self._row_states(), values, strict=True):
            getattr(self, state).append(
                as_rows(value, name=f"FunctionMetric {self.name!r}", device=keep)
            )

    def compute(self) -> Tensor:
        """The weighted mean of the batch values, or the function over every row."""
        if self.per_step:
            return (self.weighted_sum / self.weight).to(torch.get_default_dtype())
        arrays = [to_numpy(dim_zero_cat(getattr(self, state))) for state in self._row_states()]
        return torch.tensor(self._call(arrays), device=self.device)

    def _call(self, values: list[Any]) -> float:
        args, keyword_values = values[: self.num_args], values[self.num_args :]
        kwargs = dict(zip(self.keywords, keyword_values, strict=True))
        return scalar(self.function(*args, **kwargs), name=self.name)

    def _row_states(self) -> list[str]:
        return [f"arg_{i}" for i in range(self.num_args)] + [f"kwarg_{k}" for k in self.keywords]


class _Shared:
    """Holds the wrapped function: copies of the metric (one per stage) share it, as a
    function is not metric state and need not be copyable."""

    def __init__(self, value: Callable[..., Any]) -> None:
        self.value = value

    def __deepcopy__(self, memo: dict[int, Any]) -> _Shared:
        return self


def _gather_on_backend_device(tensor: Tensor, group: Any = None) -> list[Tensor]:
    """torchmetrics' gather, for states that may sit on the CPU: NCCL gathers CUDA tensors
    only."""
    if dist.get_backend(group) == "nccl" and tensor.device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
        return [t.to(tensor.device) for t in gather_all_tensors(tensor.to(device), group)]
    return gather_all_tensors(tensor, group)


def _check_arguments(
    function: Any, num_args: Any, keywords: Any, per_step: Any, compute_on_cpu: Any, name: Any
) -> None:
    owner = "FunctionMetric"
    if not callable(function):
        raise TypeError(f"{owner}: function must be callable, got {function!r}")
    positive_int(num_args, f"{owner}: num_args", minimum=0)
    if not isinstance(keywords, (tuple, list)):
        raise TypeError(f"{owner}: keywords must be a tuple or list of names, got {keywords!r}")
    for i, keyword in enumerate(keywords):
        string_key(keyword, f"{owner}: keywords[{i}]")
    if len(set(keywords)) != len(keywords):
        raise ValueError(f"{owner}: keywords must not repeat a name, got {keywords!r}")
    for argument, value in (("per_step", per_step), ("compute_on_cpu", compute_on_cpu)):
        if not isinstance(value, bool):
            raise TypeError(f"{owner}: {argument} must be a bool, got {value!r}")
    if name is not None:
        string_key(name, f"{owner}: name")
