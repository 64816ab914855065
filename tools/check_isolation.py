"""Install each package alone, as a user would, and run its own tests there.

For every package (or those named): a fresh virtual environment, ``torch==2.13.0`` first
(the CPU build on this machine's disk), then the package from a folder of wheels built from
``packages/`` (so its spt siblings resolve locally and nothing else of spt comes along), plus
pytest, hypothesis and the package's ``test`` dependency group (``[dependency-groups]`` of its
pyproject: spt-distance's tests use spt-core's test harness, which its users never install),
then ``pytest packages/<pkg>/tests``. A package with extras runs
twice: once bare (its optional paths must skip or degrade cleanly) and once with every
extra installed (``spt-metrics[sklearn]``), so the tests of the optional paths run too.
Prints the end of each failed step's output, then a table; exits 1 if any run fails.

    python tools/check_isolation.py                # every package, ~1.5 min per run
    python tools/check_isolation.py spt-queue spt-knn --keep /tmp/iso
    python tools/check_isolation.py spt-metrics --extras only
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, **kwargs)


def build_wheels(target: Path) -> None:
    for folder in sorted((ROOT / "packages").iterdir()):
        done = run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "-q",
                "-w",
                str(target),
                str(folder),
            ]
        )
        if done.returncode:
            raise SystemExit(f"building {folder.name} failed:\n{done.stderr}")


def extras(package: str) -> list[str]:
    """The names of a package's extras (``[project.optional-dependencies]``), sorted."""
    pyproject = ROOT / "packages" / package / "pyproject.toml"
    project = tomllib.loads(pyproject.read_text())["project"]
    return sorted(project.get("optional-dependencies", {}))


def test_group(package: str) -> list[str]:
    """The requirements of a package's ``test`` dependency group (PEP 735), if it has one."""
    pyproject = ROOT / "packages" / package / "pyproject.toml"
    return list(tomllib.loads(pyproject.read_text()).get("dependency-groups", {}).get("test", []))


def variants(package: str, mode: str = "both") -> list[str]:
    """The installs to test: ``package`` bare and/or with all its extras, by ``mode``
    (``"both"``, ``"none"``, ``"only"``); a package without extras is always tested bare.
    """
    names = extras(package)
    if not names:
        return [package]
    full = f"{package}[{','.join(names)}]"
    return {"both": [package, full], "none": [package], "only": [full]}[mode]


def folder_name(install: str) -> str:
    """``spt-x[a,b]`` -> ``spt-x-a-b``: the name of ``install``'s environment in the work folder
    (its failure log is that name plus ``.log``)."""
    return install.replace("[", "-").replace("]", "").replace(",", "-")


def check(install: str, wheels: Path, work: Path) -> tuple[bool, str, float]:
    """Install ``install`` (``spt-x`` or ``spt-x[extra,...]``) in a fresh environment and
    run the package's tests there; returns (passed, last line or summary, seconds)."""
    start = time.perf_counter()
    package = install.split("[", 1)[0]
    venv = work / folder_name(install)
    python = str(venv / "bin" / "python")
    log = work / f"{folder_name(install)}.log"
    log.unlink(missing_ok=True)
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [python, "-m", "pip", "install", "-q", TORCH],
        [
            python,
            "-m",
            "pip",
            "install",
            "-q",
            "--find-links",
            str(wheels),
            install,
            "pytest",
            "hypothesis",
            *test_group(package),
            TORCH,
        ],
        [
            python,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(ROOT / "packages" / package),
            str(ROOT / "packages" / package / "tests"),
        ],
    ]
    for step in steps:
        done = run(step, cwd=work)
        if done.returncode:
            log.write_text(done.stdout + done.stderr)
            last = (done.stdout + done.stderr).strip().splitlines()[-1]
            return False, f"{last} (whole output: {log})", time.perf_counter() - start
    summary = done.stdout.strip().splitlines()[-1]
    freeze = run([python, "-m", "pip", "freeze"]).stdout
    spt = sorted(line.split("==")[0] for line in freeze.splitlines() if line.startswith("spt"))
    return True, f"{summary}; spt installed: {', '.join(spt)}", time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("packages", nargs="*", help="folders under packages/ (default: all)")
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: a temp folder)")
    parser.add_argument(
        "--extras",
        choices=["both", "none", "only"],
        default="both",
        help="test packages with extras bare and with every extra (both, the default), "
        "bare only (none), or with every extra only (only)",
    )
    args = parser.parse_args()
    names = args.packages or sorted(p.name for p in (ROOT / "packages").iterdir())
    installs = [install for name in names for install in variants(name, args.extras)]
    with tempfile.TemporaryDirectory() as scratch:
        work = args.keep or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        build_wheels(work / "wheels")
        results = {install: check(install, work / "wheels", work) for install in installs}
        for install, (ok, _, _) in results.items():
            if not ok:
                tail = (work / f"{folder_name(install)}.log").read_text().splitlines()[-60:]
                print(f"\n--- {install} (last {len(tail)} lines) ---", *tail, sep="\n")
    width = max(len(install) for install in results) + 1
    print(f"\n{'install':<{width}} {'result':<6} {'seconds':>7}  detail")
    for install, (ok, detail, seconds) in results.items():
        print(f"{install:<{width}} {'pass' if ok else 'FAIL':<6} {seconds:7.0f}  {detail}")
    return 0 if all(ok for ok, _, _ in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
