"""A rendezvous port for a test's DDP launch that concurrent launches cannot take."""

from __future__ import annotations

import random
import socket
from pathlib import Path

_PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10_000


def _ephemeral_start() -> int:
    """The first port of the kernel's ephemeral range (Linux's default where unreadable)."""
    try:
        return int(_PORT_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_port(attempts: int = 100) -> int:
    """A TCP port nobody listens on, chosen at random below the kernel's ephemeral range.

    ``bind(("", 0))``, which Lightning uses when ``MASTER_PORT`` is unset, returns a port of
    the ephemeral range, the range the kernel also draws the local end of every outgoing
    connection from. When DDP launches run side by side (``pytest -n 2``), one launch's gloo
    connections can then take the port another launch chose before its store listens on it,
    and that launch fails with "address already in use". Ports below the range are never handed
    out that way; they are drawn with the system's randomness, so seeded test processes do not
    draw the same ones.

    Args:
        attempts: Ports tried before giving up.

    Returns:
        A port from 10000 up to the ephemeral range's start, free when probed.

    Raises:
        RuntimeError: If every port tried was taken.

    Example:
        >>> 10_000 <= free_port() < _ephemeral_start()
        True
    """
    draw = random.SystemRandom()
    top = max(_ephemeral_start(), _LOWEST + attempts)
    for _ in range(attempts):
        port = draw.randrange(_LOWEST, top)
        with socket.socket() as probe:
            try:
                probe.bind(("", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"free_port: {attempts} ports between {_LOWEST} and {top} were all taken")
