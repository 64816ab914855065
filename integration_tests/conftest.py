"""The shared harness of the end-to-end tests.

A scenario is a script in ``scenarios/`` that builds a real ``lightning.Trainer`` on CPU
(``--devices 2`` runs DDP with gloo), and saves what each rank observed with
``scenarios/_common.py``'s ``save``. Scripts run in a subprocess because Lightning's DDP
launcher starts the other ranks by running the same command again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch

from spt_core.testing import free_port

SCENARIOS = Path(__file__).parent / "scenarios"
# Scenario scripts run a Trainer when imported: never collect them (not even for doctests).
collect_ignore = ["scenarios"]


def _run(name: str, workdir: Path, devices: int, timeout: float, params: dict) -> list[Any]:
    out = workdir / f"{name}-{devices}-{uuid.uuid4().hex[:8]}"
    command = [
        sys.executable,
        str(SCENARIOS / f"{name}.py"),
        "--out",
        str(out),
        "--devices",
        str(devices),
        "--params",
        json.dumps(params),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MASTER_", "LOCAL_RANK"))}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", MASTER_PORT=str(free_port()))
    process = subprocess.Popen(
        command,
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # one process group: a timeout kills every rank
    )
    try:
        log, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        log, _ = process.communicate()
        pytest.fail(f"scenario {name} (devices={devices}) hung for {timeout}s:\n{log[-6000:]}")
    if process.returncode != 0:
        pytest.fail(f"scenario {name} (devices={devices}) failed:\n{log[-6000:]}")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(devices)]


@pytest.fixture
def run_scenario(tmp_path):
    """Run ``scenarios/{name}.py`` and return each rank's saved result, rank order.

    Usage: ``ranks = run_scenario("queue_fill", devices=2, queue_length=16)``; keyword
    arguments reach the script as ``args.params``. The working folder (checkpoints, logs)
    is the test's ``tmp_path``, also exposed to scripts as the current directory.
    """

    def run(name: str, devices: int = 1, timeout: float = 300, **params: Any) -> list[Any]:
        return _run(name, tmp_path, devices, timeout, params)

    return run
