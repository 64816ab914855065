"""Install each package alone, as a user would, and run its own tests there.

For every package (or those named): a fresh virtual environment, ``torch==2.13.0`` first
(the CPU build on this machine's disk), then the package from a folder of wheels built from
``packages/`` (so its spt siblings resolve locally and nothing else of spt comes along), plus
pytest and hypothesis, then ``pytest packages/<pkg>/tests``. Prints a table; exits 1 if any
package fails.

    python tools/check_isolation.py                # every package, ~1.5 min each
    python tools/check_isolation.py spt-queue spt-knn --keep /tmp/iso
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
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


def check(package: str, wheels: Path, work: Path) -> tuple[bool, str, float]:
    start = time.perf_counter()
    venv = work / package
    python = str(venv / "bin" / "python")
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
            package,
            "pytest",
            "hypothesis",
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
            return (
                False,
                (done.stdout + done.stderr).strip().splitlines()[-1],
                time.perf_counter() - start,
            )
    summary = done.stdout.strip().splitlines()[-1]
    freeze = run([python, "-m", "pip", "freeze"]).stdout
    spt = sorted(line.split("==")[0] for line in freeze.splitlines() if line.startswith("spt"))
    return True, f"{summary}; spt installed: {', '.join(spt)}", time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("packages", nargs="*", help="folders under packages/ (default: all)")
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: a temp folder)")
    args = parser.parse_args()
    names = args.packages or sorted(p.name for p in (ROOT / "packages").iterdir())
    with tempfile.TemporaryDirectory() as scratch:
        work = args.keep or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        build_wheels(work / "wheels")
        results = {name: check(name, work / "wheels", work) for name in names}
    print(f"\n{'package':<15} {'result':<6} {'seconds':>7}  detail")
    for name, (ok, detail, seconds) in results.items():
        print(f"{name:<15} {'pass' if ok else 'FAIL':<6} {seconds:7.0f}  {detail}")
    return 0 if all(ok for ok, _, _ in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
