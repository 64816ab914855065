"""The workspace tools: dependency check and release helper."""

import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_declared_dependencies_match_the_imports():
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "check_deps.py")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "spt-queue" in done.stdout


def test_release_bumps_version_changelog_and_dependent_ranges(tmp_path):
    for name in ("spt-core", "spt-queue"):
        shutil.copytree(ROOT / "packages" / name, tmp_path / "packages" / name)
    release = runpy.run_path(str(ROOT / "tools" / "release.py"))["release"]
    core = tmp_path / "packages" / "spt-core"
    (core / "CHANGELOG.md").write_text("# Changelog\n\n## Unreleased\n- New thing.\n")
    version, dependents = release(tmp_path, "spt-core", "minor", ["Another."])
    assert str(version).endswith(".0") and version.minor >= 2
    assert f'__version__ = "{version}"' in (core / "src/spt_core/__about__.py").read_text()
    changelog = (core / "CHANGELOG.md").read_text()
    assert f"## {version}\n- Another.\n- New thing." in changelog
    assert dependents == ["spt-queue"]
    queue = (tmp_path / "packages/spt-queue/pyproject.toml").read_text()
    assert f'"spt-core>={version.major}.{version.minor},<0.{version.minor + 1}"' in queue


@pytest.mark.parametrize(("part", "expected"), [("major", "1.0.0"), ("patch", "0.3.5")])
def test_bump_parts(part, expected):
    from packaging.version import Version

    bump = runpy.run_path(str(ROOT / "tools" / "release.py"))["bump"]
    assert str(bump(Version("0.3.4"), part)) == expected
