"""Bump one package's version, date its changelog, and widen siblings' ranges if needed.

Usage::

    python tools/release.py spt-knn minor            # 0.1.3 -> 0.2.0
    python tools/release.py spt-knn patch -m "Fix ..."  # adds the line to the new section

The changelog's ``## Unreleased`` section (if any) becomes the new version's section; ``-m``
lines are added to it. A sibling whose range on this package no longer admits the new
version gets the range ``>=X.Y,<X.(Y+1)`` (``<X+1`` from 1.0 on), and is listed so you can
release it too. Run ``python tools/check_deps.py`` afterwards.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
_VERSION = re.compile(r"""(__version__\s*=\s*["'])([^"']+)(["'])""")


def bump(version: Version, part: str) -> Version:
    """The next version for ``part`` in ``major``, ``minor``, ``patch``."""
    major, minor, patch = (*version.release, 0, 0)[:3]
    if part == "major":
        return Version(f"{major + 1}.0.0")
    if part == "minor":
        return Version(f"{major}.{minor + 1}.0")
    return Version(f"{major}.{minor}.{patch + 1}")


def compatible_range(version: Version) -> str:
    major, minor = version.release[0], version.release[1]
    upper = f"{major + 1}" if major >= 1 else f"0.{minor + 1}"
    return f">={major}.{minor},<{upper}"


def release(root: Path, name: str, part: str, messages: list[str]) -> tuple[Version, list[str]]:
    folder = root / "packages" / name
    about = folder / "src" / name.replace("-", "_") / "__about__.py"
    text = about.read_text()
    new = bump(Version(_VERSION.search(text).group(2)), part)
    about.write_text(_VERSION.sub(rf"\g<1>{new}\g<3>", text))
    _write_changelog(folder / "CHANGELOG.md", new, messages)
    return new, _widen_dependents(root, name, new)


def _write_changelog(path: Path, version: Version, messages: list[str]) -> None:
    lines = path.read_text().splitlines()
    entries = [f"- {m}" for m in messages]
    if "## Unreleased" in lines:
        at = lines.index("## Unreleased")
        lines[at] = f"## {version}"
        lines[at + 1 : at + 1] = entries
    else:
        at = next((i for i, line in enumerate(lines) if line.startswith("## ")), len(lines))
        lines[at:at] = [f"## {version}", *entries, ""]
    path.write_text("\n".join(lines) + "\n")


def _widen_dependents(root: Path, name: str, version: Version) -> list[str]:
    changed = []
    for pyproject in sorted(root.glob("packages/*/pyproject.toml")):
        text = pyproject.read_text()
        for match in re.finditer(rf'"({re.escape(name)}[^"]*)"', text):
            requirement = Requirement(match.group(1))
            if requirement.name == name and not requirement.specifier.contains(version):
                text = text.replace(match.group(0), f'"{name}{compatible_range(version)}"')
                changed.append(pyproject.parent.name)
        pyproject.write_text(text)
    return changed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", help="folder under packages/, e.g. spt-knn")
    parser.add_argument("part", choices=["major", "minor", "patch"])
    parser.add_argument("-m", "--message", action="append", default=[], help="changelog line")
    args = parser.parse_args()
    if not (ROOT / "packages" / args.package / "pyproject.toml").exists():
        parser.error(f"no package folder packages/{args.package}")
    version, dependents = release(ROOT, args.package, args.part, args.message)
    print(f"{args.package} -> {version}")
    for dependent in dependents:
        print(f"widened the range in {dependent}: release it too")
    print("existing hatch environments hold the old editable metadata: run `hatch env prune`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
