"""Entry point of `CallbackTester.run_ddp`: ``python ddp_main.py SPEC OUT_FOLDER``.

Lightning's DDP launcher starts the other ranks by running this same command again; each
rank writes what it logged to ``OUT_FOLDER/rank{r}.json``.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import pickle
import sys
from pathlib import Path
from types import ModuleType
from typing import Any


class _SourceUnpickler(pickle.Unpickler):
    """Finds classes of modules that cannot be imported by name in their source file."""

    def __init__(self, file: io.BufferedIOBase, sources: dict[str, str]) -> None:
        super().__init__(file)
        self.sources = sources
        self.loaded: dict[str, ModuleType] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except ImportError:
            if module not in self.sources:
                raise
        if module not in self.loaded:
            spec = importlib.util.spec_from_file_location(module, self.sources[module])
            self.loaded[module] = importlib.util.module_from_spec(spec)
            sys.modules[module] = self.loaded[module]
            spec.loader.exec_module(self.loaded[module])
        return getattr(self.loaded[module], name)


def main(spec_path: str, out_folder: str) -> None:
    """Run the pickled ``(tester, stage, devices)`` and save this rank's logged values."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != here]
    import torch.distributed as dist

    from spt_core.testing.tester import execute

    with open(spec_path, "rb") as file:
        sources = pickle.load(file)
        tester, stage, devices = _SourceUnpickler(file, sources).load()
    logged = execute(tester, stage, devices)
    rank = dist.get_rank() if dist.is_initialized() else 0
    (Path(out_folder) / f"rank{rank}.json").write_text(json.dumps(logged))


if __name__ == "__main__":
    main(*sys.argv[1:3])
