"""Build every package's wheel and sdist with `hatch build` and check their metadata.

For each package: the version in both archives equals ``src/<pkg>/__about__.py``, the
dependencies (``Requires-Dist``, extras included) equal those of its ``pyproject.toml``, the
wheel holds ``py.typed`` and no test file, and the sdist holds the README, the CHANGELOG and
the tests. Prints a table; exits 1 if any check fails.

    python tools/check_dists.py               # every package
    python tools/check_dists.py spt-knn --keep /tmp/dists
"""

from __future__ import annotations

import argparse
import email.parser
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from pathlib import Path

from check_deps import read_version
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def expected(folder: Path) -> tuple[str, set[str]]:
    """The version and the set of requirement strings a package declares."""
    project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
    version = str(read_version(folder, folder.name.replace("-", "_")))
    requires = {normalise(r) for r in project.get("dependencies", [])}
    for extra, deps in project.get("optional-dependencies", {}).items():
        requires |= {normalise(f'{d}; extra == "{extra}"') for d in deps}
    return version, requires


def normalise(requirement: str) -> str:
    return str(Requirement(requirement))


def metadata(text: str) -> tuple[str, set[str]]:
    message = email.parser.Parser().parsestr(text)
    return message["Version"], {normalise(r) for r in message.get_all("Requires-Dist", [])}


def check(folder: Path, out: Path) -> list[str]:
    """Problems found with one package's archives (empty when all is well)."""
    built = subprocess.run(
        ["hatch", "build", "-t", "wheel", "-t", "sdist", str(out)],
        cwd=folder,
        capture_output=True,
        text=True,
    )
    if built.returncode:
        return [f"hatch build failed: {built.stderr.strip().splitlines()[-1]}"]
    version, requires = expected(folder)
    module = folder.name.replace("-", "_")
    problems = []
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        found = metadata(archive.read(meta).decode())
    problems += compare("wheel", found, version, requires)
    if f"{module}/py.typed" not in names:
        problems.append("wheel: no py.typed")
    if any("/tests/" in n or n.startswith("tests/") for n in names):
        problems.append("wheel: holds tests")
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
        info = next(n for n in names if n.count("/") == 1 and n.endswith("/PKG-INFO"))
        found = metadata(archive.extractfile(info).read().decode())
    problems += compare("sdist", found, version, requires)
    for wanted in ("README.md", "CHANGELOG.md", "tests/"):
        if not any(n.split("/", 1)[-1].startswith(wanted) for n in names):
            problems.append(f"sdist: no {wanted}")
    return problems


def compare(kind: str, found: tuple[str, set[str]], version: str, requires: set[str]) -> list:
    problems = []
    if found[0] != version:
        problems.append(f"{kind}: version {found[0]} != {version}")
    if found[1] != requires:
        problems.append(f"{kind}: requires {sorted(found[1] ^ requires)} differ")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("packages", nargs="*", help="folders under packages/ (default: all)")
    parser.add_argument("--keep", type=Path, help="folder for the archives (default: temp)")
    args = parser.parse_args()
    names = args.packages or sorted(p.name for p in (ROOT / "packages").iterdir())
    failed = False
    with tempfile.TemporaryDirectory() as scratch:
        work = args.keep or Path(scratch)
        print(f"{'package':<15} {'version':<8} {'result':<6} detail")
        for name in names:
            folder = ROOT / "packages" / name
            out = work / name
            out.mkdir(parents=True, exist_ok=True)
            problems = check(folder, out)
            version, requires = expected(folder)
            failed |= bool(problems)
            detail = "; ".join(problems) or f"{len(requires)} requirements match"
            print(f"{name:<15} {version:<8} {'FAIL' if problems else 'ok':<6} {detail}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
