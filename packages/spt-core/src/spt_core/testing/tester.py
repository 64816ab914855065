"""`CallbackTester`: run a callback in a real Trainer, on one or two processes, and compare
what it logged with a reference (after torchmetrics' ``MetricTester``)."""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FunctionType
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset

from spt_core.testing.launch import free_port
from spt_core.testing.parts import RecordingLogger, quiet_trainer

_SCRIPT = Path(__file__).with_name("ddp_main.py")


@dataclass
class CallbackTester:
    """A callback, a module and data, run by `run` (one process) or `run_ddp` (two gloo
    processes); both return ``{name: [every value logged under it]}``.

    For `run_ddp` everything must pickle (``functools.partial`` of a callback class, a
    module without lambdas) and each rank's data should split evenly (rows a multiple of
    ``devices * batch_size``), or the distributed sampler repeats rows.

    Args:
        make_callback: ``make_callback() -> Callback`` (a fresh one per run).
        make_module: ``make_module() -> LightningModule``.
        train: Training rows (``None``: validation only).
        val: Validation rows.
        batch_size: Rows per batch (per process).
        trainer_kwargs: Passed to `quiet_trainer`.

    Raises:
        ValueError: From `run` and `run_ddp`, when ``stage`` is neither ``"fit"`` nor
            ``"validate"``.
        AssertionError: From `run_ddp` when the run fails or hangs, and from `assert_logged`
            when a value is missing or different.

    Example:
        >>> import torch
        >>> from spt_core.testing import Backbone, DictDataset
        >>> from lightning.pytorch.callbacks import Callback
        >>> class LogMean(Callback):
        ...     def on_validation_batch_end(self, trainer, module, outputs, batch, *args):
        ...         module.log("mean", outputs["embedding"].mean(), on_epoch=True)
        >>> tester = CallbackTester(LogMean, Backbone, val=DictDataset(x=torch.arange(8.0)))
        >>> logged = tester.run(stage="validate")
        >>> tester.assert_logged(logged, {"mean": 3.5})
    """

    make_callback: Callable[[], L.Callback]
    make_module: Callable[[], L.LightningModule]
    train: Dataset | None = None
    val: Dataset | None = None
    batch_size: int = 8
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)

    def run(self, stage: str = "fit") -> dict[str, list[float]]:
        """Run ``trainer.fit`` (``stage="fit"``) or ``trainer.validate`` on one process.

        Returns:
            ``{name: values}`` as logged, in order.

        Raises:
            ValueError: When ``stage`` is neither ``"fit"`` nor ``"validate"``.
        """
        return execute(self, stage, devices=1)

    def run_ddp(
        self, stage: str = "fit", devices: int = 2, timeout: float = 300
    ) -> dict[str, list[float]]:
        """Run the same on ``devices`` CPU processes (DDP, gloo) in a subprocess.

        Returns:
            ``{name: values}`` as logged by rank 0.

        Raises:
            AssertionError: When the run fails or outlives ``timeout`` seconds.
        """
        with tempfile.TemporaryDirectory() as folder:
            spec = Path(folder) / "spec.pkl"
            spec.write_bytes(_dumps((self, stage, devices)))
            env = {k: v for k, v in os.environ.items() if not k.startswith(("MASTER_", "LOCAL_"))}
            env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", MASTER_PORT=str(free_port()))
            command = [sys.executable, str(_SCRIPT), str(spec), folder]
            process = subprocess.Popen(
                command,
                cwd=folder,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            try:
                log, _ = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                log, _ = process.communicate()
                raise AssertionError(f"DDP run hung for {timeout}s:\n{log[-4000:]}") from None
            if process.returncode:
                raise AssertionError(f"DDP run failed:\n{log[-4000:]}")
            return json.loads((Path(folder) / "rank0.json").read_text())

    @staticmethod
    def assert_logged(
        logged: Mapping[str, list[float]],
        expected: Mapping[str, Any],
        atol: float = 1e-5,
        rtol: float = 1e-5,
    ) -> None:
        """Assert that the last value logged under each expected name is close to it.

        Raises:
            AssertionError: Naming every missing or different value.
        """
        problems = []
        for name, value in expected.items():
            if not logged.get(name):
                problems.append(f"{name!r} was not logged (logged: {sorted(logged)})")
            elif not math.isclose(logged[name][-1], float(value), rel_tol=rtol, abs_tol=atol):
                problems.append(f"{name!r}: logged {logged[name][-1]}, expected {float(value)}")
        assert not problems, "; ".join(problems)


class _SourceRecorder(pickle.Pickler):
    """Notes the source file of every module a pickled class or function comes from."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file)
        self.sources: dict[str, str] = {}

    def reducer_override(self, obj: Any) -> Any:
        module = sys.modules.get(getattr(obj, "__module__", None) or "")
        if isinstance(obj, type | FunctionType) and getattr(module, "__file__", None):
            self.sources[module.__name__] = module.__file__
        return NotImplemented


def _dumps(payload: Any) -> bytes:
    """``payload`` pickled after a table of its modules' files, so that the other process can
    load test modules that pytest imported by path (``--import-mode=importlib``)."""
    body = io.BytesIO()
    recorder = _SourceRecorder(body)
    recorder.dump(payload)
    return pickle.dumps(recorder.sources) + body.getvalue()


def execute(tester: CallbackTester, stage: str, devices: int) -> dict[str, list[float]]:
    """Run ``tester``'s Trainer on ``devices`` processes of this launch and return what was
    logged (every rank returns its own record)."""
    if stage not in ("fit", "validate"):
        raise ValueError(f"CallbackTester: stage must be 'fit' or 'validate', got {stage!r}")
    logger = RecordingLogger()
    settings: dict[str, Any] = {"log_every_n_steps": 1, **tester.trainer_kwargs}
    settings.update(devices=devices, logger=logger)
    if devices > 1:
        settings["strategy"] = "ddp"
    trainer = quiet_trainer(callbacks=[tester.make_callback()], **settings)
    module = tester.make_module()

    def loader(data: Dataset | None) -> DataLoader | None:
        return None if data is None else DataLoader(data, batch_size=tester.batch_size)

    if stage == "fit":
        trainer.fit(module, loader(tester.train), loader(tester.val))
    else:
        trainer.validate(module, loader(tester.val), verbose=False)
    return logger.logged()
