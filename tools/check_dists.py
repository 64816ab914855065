"""Build every package's wheel and sdist with `hatch build` and check their metadata.

For each package: the version in both archives equals ``src/<pkg>/__about__.py``, the
dependencies (``Requires-Dist``, extras included) equal those of its ``pyproject.toml``, the
wheel holds ``py.typed`` and no test file, and the sdist holds the README, the CHANGELOG and
the tests. Both archives carry the repository's MIT ``LICENSE`` (``License-Expression: MIT``,
``License-File: LICENSE``, the file itself identical to the root one), the project URLs
(Homepage, Documentation, Changelog, Issues, all on the project's repository), the
``Typing :: Typed`` classifier and one Python version classifier for each minor version from
the ``Requires-Python`` floor up, with none that it excludes. Prints a table; exits 1 if any
check fails.

    python tools/check_dists.py               # every package
    python tools/check_dists.py spt-knn --keep /tmp/dists
"""

from __future__ import annotations

import argparse
import email.message
import email.parser
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from pathlib import Path

from check_deps import read_version
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = "https://github.com/spt-dev/spt"
URL_LABELS = ("Homepage", "Documentation", "Changelog", "Issues")
_PYTHON_CLASSIFIER = re.compile(r"Programming Language :: Python :: (3\.\d+)$")


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


def parse(text: str) -> email.message.Message:
    """A ``METADATA`` / ``PKG-INFO`` file as a message (headers are its fields)."""
    return email.parser.Parser().parsestr(text)


def metadata(text: str) -> tuple[str, set[str]]:
    """The version and the normalised ``Requires-Dist`` set of a metadata file."""
    message = parse(text)
    return message["Version"], {normalise(r) for r in message.get_all("Requires-Dist", [])}


def metadata_problems(kind: str, text: str) -> list[str]:
    """Licence, project URLs and classifiers of one archive's metadata (see the module notes).

    Example:
        >>> metadata_problems("wheel", "Name: x\\nRequires-Python: >=3.11\\n")[:2]
        ['wheel: License-Expression is None, not MIT', 'wheel: no License-File: LICENSE']
    """
    message = parse(text)
    problems = []
    if message["License-Expression"] != "MIT":
        problems.append(f"{kind}: License-Expression is {message['License-Expression']}, not MIT")
    if "LICENSE" not in message.get_all("License-File", []):
        problems.append(f"{kind}: no License-File: LICENSE")
    urls = dict(
        (part.strip() for part in entry.split(",", 1))
        for entry in message.get_all("Project-URL", [])
    )
    for label in URL_LABELS:
        if label not in urls:
            problems.append(f"{kind}: no Project-URL {label}")
    for label, url in sorted(urls.items()):
        if url != REPOSITORY and not url.startswith(f"{REPOSITORY}/"):
            problems.append(f"{kind}: Project-URL {label} {url} is not under {REPOSITORY}")
    classifiers = message.get_all("Classifier", [])
    if "Typing :: Typed" not in classifiers:
        problems.append(f"{kind}: no classifier Typing :: Typed")
    problems += python_classifier_problems(kind, message["Requires-Python"], classifiers)
    return problems


def python_classifier_problems(kind: str, requires_python: str | None, classifiers: list[str]):
    """The Python ``3.X`` classifiers must start at the ``Requires-Python`` floor, run without
    a gap, and name no version that ``Requires-Python`` excludes.

    Example:
        >>> python_classifier_problems("wheel", ">=3.11", [
        ...     "Programming Language :: Python :: 3.10",
        ...     "Programming Language :: Python :: 3.12",
        ... ])  # doctest: +NORMALIZE_WHITESPACE
        ['wheel: Python classifiers 3.10, 3.12 do not run from 3.11 without a gap',
         'wheel: Python classifier 3.10 is excluded by Requires-Python >=3.11']
    """
    if not requires_python:
        return [f"{kind}: no Requires-Python"]
    versions = sorted(
        (Version(m.group(1)) for c in classifiers if (m := _PYTHON_CLASSIFIER.match(c))),
        key=lambda v: v.release,
    )
    if not versions:
        return [f"{kind}: no Python 3.X classifier"]
    specifier = SpecifierSet(requires_python)
    floors = [Version(s.version) for s in specifier if s.operator == ">="]
    floor = max(floors, key=lambda v: v.release) if floors else None
    minors = [v.release[1] for v in versions]
    problems = []
    run_from_floor = floor is not None and versions[0].release[:2] == floor.release[:2]
    if not run_from_floor or minors != list(range(minors[0], minors[0] + len(minors))):
        listed = ", ".join(str(v) for v in versions)
        problems.append(
            f"{kind}: Python classifiers {listed} do not run from {floor} without a gap"
        )
    for version in versions:
        if not specifier.contains(Version(f"{version}.0")):
            problems.append(
                f"{kind}: Python classifier {version} is excluded by Requires-Python "
                f"{requires_python}"
            )
    return problems


def check(folder: Path, out: Path) -> list[str]:
    """Problems found with one package's archives (empty when all is well)."""
    # Run from inside a hatch environment (as the tests do), hatch would build with that
    # environment: it must choose its own build environment, as from a plain shell.
    env = {key: value for key, value in os.environ.items() if key != "HATCH_ENV_ACTIVE"}
    built = subprocess.run(
        ["hatch", "build", "-t", "wheel", "-t", "sdist", str(out)],
        cwd=folder,
        capture_output=True,
        text=True,
        env=env,
    )
    if built.returncode:
        return [f"hatch build failed: {built.stderr.strip().splitlines()[-1]}"]
    version, requires = expected(folder)
    module = folder.name.replace("-", "_")
    licence = (ROOT / "LICENSE").read_text()
    problems = []
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        text = archive.read(meta).decode()
        licences = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        if not licences:
            problems.append("wheel: no .dist-info/licenses/LICENSE")
        elif archive.read(licences[0]).decode() != licence:
            problems.append("wheel: its LICENSE differs from the repository's LICENSE")
    problems += compare("wheel", metadata(text), version, requires)
    problems += metadata_problems("wheel", text)
    if f"{module}/py.typed" not in names:
        problems.append("wheel: no py.typed")
    if any("/tests/" in n or n.startswith("tests/") for n in names):
        problems.append("wheel: holds tests")
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
        info = next(n for n in names if n.count("/") == 1 and n.endswith("/PKG-INFO"))
        text = archive.extractfile(info).read().decode()
        top = info.split("/", 1)[0]
        if f"{top}/LICENSE" not in names:
            problems.append("sdist: no LICENSE")
        elif archive.extractfile(f"{top}/LICENSE").read().decode() != licence:
            problems.append("sdist: its LICENSE differs from the repository's LICENSE")
    problems += compare("sdist", metadata(text), version, requires)
    problems += metadata_problems("sdist", text)
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
