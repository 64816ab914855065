"""Where a benchmark puts its results: one JSON file at ``--out``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json(path: str | os.PathLike[str] | None, payload: Any) -> None:
    """Write ``payload`` as JSON at ``path`` (its folder created) and say where; nothing when
    ``path`` is empty (no ``--out``)."""
    if not path:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))
    print(f"wrote {path}")
