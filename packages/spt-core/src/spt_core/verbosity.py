"""Global verbosity of spt's own log lines.

The setting is read by every :class:`~spt_core.SPTCallback` whose ``verbose`` is ``None``.
Precedence: :func:`set_verbosity` if it was called, else the ``SPT_VERBOSE`` environment
variable, else quiet.
"""

from __future__ import annotations

import os

ENV_VAR = "SPT_VERBOSE"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})

_setting: list[bool | None] = [None]


def set_verbosity(verbose: bool | None) -> None:
    """Set the verbosity that callbacks created with ``verbose=None`` follow.

    Args:
        verbose: ``True`` for extra per-step detail, ``False`` for quiet, ``None`` to fall
            back to the ``SPT_VERBOSE`` environment variable.

    Raises:
        TypeError: If ``verbose`` is not a bool or ``None``.

    Example:
        >>> from spt_core import get_verbosity, set_verbosity
        >>> set_verbosity(True)
        >>> get_verbosity()
        True
        >>> set_verbosity(None)
    """
    if verbose is not None and not isinstance(verbose, bool):
        raise TypeError(f"verbose must be a bool or None, got {verbose!r}")
    _setting[0] = verbose


def get_verbosity() -> bool:
    """Return the global verbosity.

    Returns:
        The value given to :func:`set_verbosity`, else ``SPT_VERBOSE`` read as a flag, else
        ``False``.

    Raises:
        ValueError: If ``SPT_VERBOSE`` holds something other than 1/0, true/false, yes/no, on/off.

    Example:
        >>> from spt_core import get_verbosity, set_verbosity
        >>> set_verbosity(False)
        >>> get_verbosity()
        False
        >>> set_verbosity(None)
    """
    if _setting[0] is not None:
        return _setting[0]
    raw = os.environ.get(ENV_VAR, "").strip().lower()
    if raw in _TRUE | _FALSE:
        return raw in _TRUE
    raise ValueError(f"{ENV_VAR}={raw!r} is not understood; use 1/0, true/false, yes/no or on/off")
