"""Capture spt's log lines (loguru) in a test."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from loguru import logger


@contextmanager
def captured_logs(level: str = "INFO", format: str | None = None) -> Iterator[list[str]]:
    """Every loguru line at ``level`` or above logged inside the block, formatted.

    Args:
        level: The lowest level kept.
        format: A loguru format (``"{message}"`` keeps the message alone); ``None``: loguru's
            default line, with time, level and place.

    Returns:
        A context manager whose target is the list of lines, filled while the block runs.

    Example:
        >>> with captured_logs(format="{message}") as lines:
        ...     logger.info("hello")
        >>> lines
        ['hello\\n']
    """
    lines: list[str] = []
    options = {} if format is None else {"format": format}
    sink = logger.add(lambda message: lines.append(str(message)), level=level, **options)
    try:
        yield lines
    finally:
        logger.remove(sink)
