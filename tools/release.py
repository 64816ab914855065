"""Bump one package's version, date its changelog, and widen siblings' ranges if needed.

Usage::

    python tools/release.py spt-knn minor            # 0.1.3 -> 0.2.0
    python tools/release.py spt-knn patch -m "Fix ..."  # adds the line to the new section

The changelog's ``## Unreleased`` section (if any) becomes the new version's section; ``-m``
lines are added to it. A sibling whose range on this package no longer admits the new
version gets the range ``>=X.Y,<X.(Y+1)`` (``<X+1`` from 1.0 on), keeping the requirement's
extras and environment marker (``spt-metrics[sklearn]>=...; python_version >= "3.11"``), and
is listed so you can release it too. Run ``python tools/check_deps.py`` afterwards.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
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
    """The range of releases compatible with ``version``: same minor below 1.0, same major
    from 1.0 on.

    Example:
        >>> compatible_range(Version("0.3.1")), compatible_range(Version("1.4.0"))
        ('>=0.3,<0.4', '>=1.4,<2')
    """
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
        widened = False
        for written in _requirement_strings(tomllib.loads(text).get("project", {})):
            requirement = Requirement(written)
            if canonicalize_name(requirement.name) != canonicalize_name(name):
                continue
            if requirement.url or requirement.specifier.contains(version):
                continue
            text = _replace_toml_string(text, written, widened_requirement(requirement, version))
            widened = True
        if widened:
            pyproject.write_text(text)
            changed.append(pyproject.parent.name)
    return changed


def widened_requirement(requirement: Requirement, version: Version) -> str:
    """``requirement`` with the range :func:`compatible_range` of ``version``; its extras and
    environment marker are kept.

    Example:
        >>> old = Requirement('spt-metrics[sklearn]>=0.1,<0.2; python_version >= "3.11"')
        >>> widened_requirement(old, Version("0.2.0"))
        'spt-metrics[sklearn]>=0.2,<0.3; python_version >= "3.11"'
    """
    extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
    marker = f"; {requirement.marker}" if requirement.marker else ""
    return f"{requirement.name}{extras}{compatible_range(version)}{marker}"


def _replace_toml_string(text: str, old: str, new: str) -> str:
    """``text`` with the TOML string ``old`` (basic ``"..."`` or literal ``'...'``) written
    as ``new``, in the same kind of string."""
    basic = '"{}"'.format(old.replace("\\", "\\\\").replace('"', '\\"'))
    if basic in text:
        return text.replace(basic, '"{}"'.format(new.replace("\\", "\\\\").replace('"', '\\"')))
    literal = f"'{old}'"
    if literal in text and "'" not in new:
        return text.replace(literal, f"'{new}'")
    raise ValueError(f"cannot find the requirement {old!r} written as a one-line TOML string")


def _requirement_strings(project: dict) -> list[str]:
    """Every requirement string of a ``[project]`` table: dependencies and extras."""
    strings = list(project.get("dependencies", []))
    for requirements in project.get("optional-dependencies", {}).values():
        strings += requirements
    return strings


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
