"""Every ```python block of every README (the root one and each package's) runs as written.

Each block runs alone, in a fresh namespace, with the test's ``tmp_path`` as the current
folder (Lightning's logs and LatentViz's maps land there). A block that fits a ``trainer``
must also log every ``train/...`` / ``eval/...`` name its comments promise and write every
``.../epoch_XXXX.png`` they name.
"""

from __future__ import annotations

import re
from pathlib import Path

import lightning as L
import pytest

ROOT = Path(__file__).resolve().parents[1]
READMES = [ROOT / "README.md", *sorted(ROOT.glob("packages/*/README.md"))]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
_LOGGED = re.compile(r"\b((?:train|eval)/\w+)")
_PICTURE = re.compile(r"\b([\w./]+/epoch_\d{4}\.png)")


def python_blocks(path: Path) -> list[tuple[str, str]]:
    """``(id, source)`` of each ```python block of a README, ids like ``spt-knn:1``."""
    owner = "root" if path.parent == ROOT else path.parent.name
    blocks = _BLOCK.findall(path.read_text())
    return [(f"{owner}:{number}", source) for number, source in enumerate(blocks, 1)]


BLOCKS = [block for readme in READMES for block in python_blocks(readme)]


def comments(source: str) -> str:
    return "\n".join(line.split("#", 1)[1] for line in source.splitlines() if "#" in line)


def test_every_readme_is_searched_and_has_examples():
    owners = {block_id.split(":")[0] for block_id, _ in BLOCKS}
    assert owners == {"root"} | {path.parent.name for path in READMES[1:]}


@pytest.mark.parametrize(("block_id", "source"), BLOCKS, ids=[block_id for block_id, _ in BLOCKS])
def test_readme_example_runs(block_id, source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    L.seed_everything(0, verbose=False)
    namespace = {"__name__": f"readme_{block_id.replace('-', '_').replace(':', '_')}"}
    exec(compile(source, f"<{block_id}>", "exec"), namespace)

    trainer = namespace.get("trainer")
    if isinstance(trainer, L.Trainer) and trainer.global_step > 0:
        promised = set(_LOGGED.findall(comments(source)))
        assert promised <= set(trainer.callback_metrics), sorted(
            promised - set(trainer.callback_metrics)
        )
        for picture in _PICTURE.findall(comments(source)):
            assert (tmp_path / picture).is_file(), picture
