"""Starting a test's own process group: a rendezvous port that concurrent launches cannot
take, and one process per rank running a script."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist

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


def run_ranks(
    script: str | Path,
    *args: str,
    world_size: int = 2,
    env: Sequence[Mapping[str, str]] | None = None,
    timeout: float = 180,
) -> list[str]:
    """Run ``python script RANK PORT *args`` once per rank, all at once, and wait for them.

    The script joins the process group with :func:`join_ranks` (the port comes from
    :func:`free_port`). For tests that need ranks started differently from
    what Lightning's launcher does (another ``PYTHONHASHSEED`` per rank, say); a callback in a
    Trainer is better run by :class:`~spt_core.testing.CallbackTester`.

    Args:
        script: The Python file each rank runs.
        args: More command-line arguments, after rank and port.
        world_size: How many ranks.
        env: Per rank, variables added to this process's environment (``OMP_NUM_THREADS=1``
            is always set).
        timeout: Seconds to wait for each rank; the ranks still running then are killed.

    Returns:
        Each rank's output (stdout and stderr), in rank order.

    Raises:
        AssertionError: If a rank exits with an error or outlives ``timeout``, with the end of
            each failed rank's output.
        ValueError: If ``env`` does not hold one mapping per rank.
    """
    extra = list(env) if env is not None else [{}] * world_size
    if len(extra) != world_size:
        raise ValueError(f"run_ranks: env must hold {world_size} mappings, got {len(extra)}")
    port = str(free_port())
    ranks = [
        subprocess.Popen(
            [sys.executable, str(script), str(rank), port, *args],
            env={**os.environ, "OMP_NUM_THREADS": "1", **extra[rank]},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(world_size)
    ]
    logs = []
    try:
        for process in ranks:
            try:
                logs.append(process.communicate(timeout=timeout)[0])
            except subprocess.TimeoutExpired:
                process.kill()
                logs.append(process.communicate()[0] + f"\n(killed after {timeout}s)")
    finally:
        for process in ranks:
            if process.poll() is None:
                process.kill()
                process.communicate()
    failed = [
        f"rank {rank} (exit {process.returncode}):\n{log[-3000:]}"
        for rank, (process, log) in enumerate(zip(ranks, logs, strict=True))
        if process.returncode
    ]
    assert not failed, "\n".join(failed)
    return logs


def join_ranks(rank: int, port: int, world_size: int = 2, timeout: float = 60) -> None:
    """Join the gloo process group of a script started by :func:`run_ranks` as ``rank``.

    Args:
        rank: This process's rank (the script's first argument).
        port: The rendezvous port on 127.0.0.1 (its second argument).
        world_size: How many ranks :func:`run_ranks` started.
        timeout: Seconds a collective may wait for the other ranks.
    """
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=timeout),
    )
