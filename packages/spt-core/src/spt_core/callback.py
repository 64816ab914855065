"""The base class of every spt callback."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from loguru import logger

from spt_core.verbosity import get_verbosity


def _route(hook: str, stage: str) -> Callable[..., None]:
    """A Lightning hook that calls ``self.<hook>(trainer, pl_module, stage)``."""

    def route(self: SPTCallback, trainer: Trainer, pl_module: LightningModule) -> None:
        getattr(self, hook)(trainer, pl_module, stage)

    return route


def _route_batch_end(stage: str) -> Callable[..., None]:
    """A Lightning batch-end hook that calls ``self._eval_batch_end`` (Lightning passes no
    ``dataloader_idx`` when the stage has a single loader)."""

    def route(
        self: SPTCallback, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
        batch_idx: int, dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        self._eval_batch_end(trainer, pl_module, stage, outputs, batch, dataloader_idx)

    return route


class SPTCallback(Callback):
    """A Lightning callback with a name, its own checkpoint slot and spt's verbosity.

    Subclasses put everything that must survive a resume in :meth:`state_dict` and restore
    it in :meth:`load_state_dict`, and write validation and test behaviour once, in the
    ``_eval_*`` methods, which receive ``stage`` (``"val"`` or ``"test"``). Several instances
    of one class coexist on a Trainer as long as their names differ: each gets its own
    ``state_key``.

    Args:
        name: Unique identifier, used in logged names and in the checkpoint.
        verbose: ``True`` logs extra per-step detail, ``False`` stays quiet, ``None`` follows
            :func:`spt_core.set_verbosity` / ``SPT_VERBOSE``.

    Raises:
        ValueError: If ``name`` is empty or contains ``/``.
        TypeError: If ``name`` is not a string or ``verbose`` is not a bool or ``None``.
            Messages name the class (and the ``state_key`` once ``name`` is valid).

    Example:
        >>> class Counter(SPTCallback):
        ...     pass
        >>> Counter("steps").state_key
        'Counter[name=steps]'
    """

    #: Whether ``name`` must differ from every other spt callback's on the Trainer. Queues,
    #: which consumers share and which log nothing, opt out.
    unique_name: ClassVar[bool] = True

    def __init__(self, name: str, verbose: bool | None = None) -> None:
        super().__init__()
        kind = type(self).__name__
        if not isinstance(name, str):
            raise TypeError(f"{kind}: name must be a str, got {type(name).__name__} {name!r}")
        if not name or "/" in name:
            raise ValueError(f"{kind}: name must be a non-empty string without '/', got {name!r}")
        if verbose is not None and not isinstance(verbose, bool):
            raise TypeError(f"{kind}[name={name}]: verbose must be a bool or None, got {verbose!r}")
        self.name = name
        self._verbose = verbose
        self._said: set[tuple[str, int, int]] = set()

    @property
    def state_key(self) -> str:
        return f"{type(self).__name__}[name={self.name}]"

    @property
    def verbose(self) -> bool:
        """This callback's verbosity, resolving ``None`` to the global setting."""
        return get_verbosity() if self._verbose is None else self._verbose

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    def info(self, message: str) -> None:
        """Log ``message`` under this callback's name."""
        logger.info(f"{self.state_key}: {message}")

    def debug(self, message: str) -> None:
        """Log ``message`` only when this callback is verbose."""
        if self.verbose:
            logger.info(f"{self.state_key}: {message}")

    def info_once(self, trainer: Trainer, topic: str, message: str) -> None:
        """Log ``message`` at most once per epoch and topic (for skips and warnings).

        Only rank 0 speaks, so a DDP run prints the line once. A callback reused with a new
        Trainer speaks again.
        """
        self._say_once(trainer, topic, message, "INFO")

    def warn_once(self, trainer: Trainer, topic: str, message: str) -> None:
        """Like :meth:`info_once`, at warning level."""
        self._say_once(trainer, topic, message, "WARNING")

    def _say_once(self, trainer: Trainer, topic: str, message: str, level: str) -> None:
        mark = (topic, trainer.current_epoch, id(trainer))
        if mark not in self._said:
            self._said.add(mark)
            if trainer.is_global_zero:
                logger.log(level, f"{self.state_key}: {message}")

    def log_agreed(
        self, pl_module: LightningModule, values: Mapping[str, Any], **kwargs: Any
    ) -> None:
        """``pl_module.log`` each of ``values``, which are already the same on every rank
        (reduced by spt or by torchmetrics): no ``sync_dist``, so no second reduction, and
        none of Lightning's hints to add it (filtered for these names only).

        Args:
            pl_module: The module that logs.
            values: ``{name: value}``.
            kwargs: Passed to ``pl_module.log`` (``add_dataloader_idx``, ``prog_bar``...).
        """
        for key, value in values.items():
            _hush_sync_hint(key)
            pl_module.log(key, value, sync_dist=False, **kwargs)

    def info_if_no_validation(self, trainer: Trainer, what: str) -> None:
        """Say once per fit that ``what`` will not be logged if the fit runs no validation batch.

        Call it at train start. A fit without any validation loader is left to Lightning,
        which says so itself.
        """
        empty = trainer.val_dataloaders is not None and sum(trainer.num_val_batches) == 0
        if trainer.limit_val_batches == 0 or empty:
            self.info_once(
                trainer,
                "no-validation",
                "this fit runs no validation batch (limit_val_batches=0 or an empty "
                f"validation loader): {what} will not be logged",
            )

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Check that no other spt callback on ``trainer`` has this callback's name.

        Subclasses that override ``setup`` call ``super().setup(...)`` first.

        Raises:
            ValueError: If another spt callback (of any class) has the same ``name``.
        """
        for other in trainer.callbacks:
            if other is self or not isinstance(other, SPTCallback):
                continue
            if self.unique_name and other.unique_name and other.name == self.name:
                raise ValueError(
                    f"{self.state_key}: another spt callback ({other.state_key}) has the name "
                    f"{self.name!r}; names key the logged values, callbacks_modules and "
                    "callbacks_metrics, so each spt callback on a Trainer needs its own"
                )

    def _eval_start(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """A validation (sanity check included) or test run starts."""

    def _eval_epoch_start(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """A validation or test epoch starts."""

    def _eval_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, stage: str, outputs: Any, batch: Any,
        dataloader_idx: int,
    ) -> None:  # fmt: skip
        """A batch of validation or test loader ``dataloader_idx`` ended."""

    def _eval_epoch_end(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """A validation or test epoch ended."""

    def _eval_end(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """A validation or test run ended."""

    # Lightning calls its hooks by name; those of both stages reach the ``_eval_*`` methods.
    on_validation_start = _route("_eval_start", "val")
    on_test_start = _route("_eval_start", "test")
    on_validation_epoch_start = _route("_eval_epoch_start", "val")
    on_test_epoch_start = _route("_eval_epoch_start", "test")
    on_validation_batch_end = _route_batch_end("val")
    on_test_batch_end = _route_batch_end("test")
    on_validation_epoch_end = _route("_eval_epoch_end", "val")
    on_test_epoch_end = _route("_eval_epoch_end", "test")
    on_validation_end = _route("_eval_end", "val")
    on_test_end = _route("_eval_end", "test")

    def state_dict(self) -> dict[str, Any]:
        """What must survive a resume; empty for a stateless callback.

        It never communicates: under DDP it describes this rank only. State that must hold
        every rank's share (queue rows) is gathered by :meth:`gather_checkpoint_state`.
        """
        return {}

    def gather_checkpoint_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """The state written to a checkpoint, given this rank's :meth:`state_dict`.

        Called on every rank while a checkpoint is saved; override it to gather what each
        rank holds, through :mod:`spt_core.distributed`. The default returns ``state``.
        """
        return state

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        states = checkpoint.get("callbacks", {})
        if self.state_key in states:
            states[self.state_key] = self.gather_checkpoint_state(states[self.state_key])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


def _hush_sync_hint(key: str) -> None:
    """Filter Lightning's hint to log ``key`` with ``sync_dist=True``, unless already filtered
    (``warnings.catch_warnings`` may have dropped an earlier filter)."""
    hint = re.escape(f"It is recommended to use `self.log({key!r}, ..., sync_dist=True)`")
    if not any(
        message is not None and message.pattern == hint for _, message, *_ in warnings.filters
    ):
        warnings.filterwarnings("ignore", message=hint, category=PossibleUserWarning)


def callbacks_modules(pl_module: LightningModule) -> dict[str, Any]:
    """The ``callbacks_modules`` dict of ``pl_module``, created on first use.

    A plain attribute, not a registered submodule: the model's parameters, its
    ``state_dict`` and DDP's wrapper never see what callbacks put there.

    Args:
        pl_module: The model the callbacks run on.

    Returns:
        The dict itself (the same object on every call), keyed by callback name.

    Raises:
        TypeError: If ``pl_module`` cannot hold attributes (it is no ``LightningModule``).

    Example:
        >>> from lightning.pytorch import LightningModule
        >>> model = LightningModule()
        >>> callbacks_modules(model)["probe"] = "a head"
        >>> callbacks_modules(model)
        {'probe': 'a head'}
        >>> "callbacks_modules" in dict(model.named_modules())
        False
    """
    return _plain_dict(pl_module, "callbacks_modules")


def callbacks_metrics(pl_module: LightningModule) -> dict[str, Any]:
    """The ``callbacks_metrics`` dict of ``pl_module``, created on first use (a plain
    attribute, like :func:`callbacks_modules`).

    Args:
        pl_module: The model.

    Returns:
        Where callbacks keep their live metric objects: ``{callback name: metrics}``.

    Raises:
        TypeError: As :func:`callbacks_modules` does.

    Example:
        >>> from lightning.pytorch import LightningModule
        >>> model = LightningModule()
        >>> callbacks_metrics(model) is callbacks_metrics(model)
        True
        >>> callbacks_metrics(model)
        {}
    """
    return _plain_dict(pl_module, "callbacks_metrics")


def _plain_dict(pl_module: LightningModule, attribute: str) -> dict[str, Any]:
    if not hasattr(pl_module, "__dict__"):  # a LightningModule, or a stand-in with attributes
        raise TypeError(
            f"{attribute}: pl_module must be a LightningModule, got {type(pl_module).__name__}"
        )
    store = pl_module.__dict__.get(attribute)
    if store is None:
        store = {}
        # object.__setattr__ keeps nn.Module from registering anything it may hold later.
        object.__setattr__(pl_module, attribute, store)
    return store
