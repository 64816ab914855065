"""Check that every package's declared dependencies match what its source imports.

For each ``packages/*/``: every third-party or sibling module imported under ``src/`` must
be a declared dependency (or an optional extra, for imports guarded inside a function or a
``try``), every declared dependency must be imported, sibling ranges must admit the
sibling's current version, and the sibling graph must have no cycle.

Usage: ``python tools/check_deps.py`` (exit 1 and one line per problem when something is off).
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
# Import name -> distribution name, where they differ.
DISTRIBUTIONS = {"sklearn": "scikit-learn", "hydra": "hydra-core", "PIL": "pillow"}
# Import names that come with a declared distribution rather than on their own.
PROVIDED_BY = {"lightning_utilities": "lightning", "numpy": "torch"}


@dataclass
class Package:
    folder: Path
    name: str
    version: Version
    requires: dict[str, Requirement]
    extras: dict[str, set[str]]
    top_level: set[str] = field(default_factory=set)
    guarded: set[str] = field(default_factory=set)


def read_version(folder: Path, module: str) -> Version:
    """The version in ``src/<module>/__about__.py`` of a package folder."""
    text = (folder / "src" / module / "__about__.py").read_text()
    return Version(re.search(r"__version__\s*=\s*[\"']([^\"']+)", text).group(1))


def load(folder: Path) -> Package:
    meta = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
    module = meta["name"].replace("-", "_")
    requires = {Requirement(r).name: Requirement(r) for r in meta.get("dependencies", [])}
    extras = {
        extra: {Requirement(r).name for r in reqs}
        for extra, reqs in meta.get("optional-dependencies", {}).items()
    }
    package = Package(folder, meta["name"], read_version(folder, module), requires, extras)
    for source in (folder / "src").rglob("*.py"):
        _scan(ast.parse(source.read_text()), package, module)
    return package


def _scan(tree: ast.Module, package: Package, own: str) -> None:
    guarded_nodes = set()
    for node in ast.walk(tree):
        type_checking = isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Try)) or type_checking:
            guarded_nodes.update(id(n) for n in ast.walk(node) if n is not node)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top == own or top in sys.stdlib_module_names or top == "__future__":
                continue
            distribution = DISTRIBUTIONS.get(top, top.replace("_", "-"))
            (package.guarded if id(node) in guarded_nodes else package.top_level).add(distribution)


def problems(packages: list[Package]) -> list[str]:
    found = []
    by_name = {p.name: p for p in packages}
    for p in packages:
        declared = set(p.requires)
        optional = set().union(*p.extras.values()) if p.extras else set()
        for dist in sorted(p.top_level - declared):
            if PROVIDED_BY.get(dist.replace("-", "_")) not in declared:
                found.append(f"{p.name}: imports {dist} at module level but does not declare it")
        for dist in sorted(p.guarded - declared - optional):
            if PROVIDED_BY.get(dist.replace("-", "_")) not in declared:
                found.append(
                    f"{p.name}: imports {dist} but declares it neither as a dependency "
                    "nor as an extra"
                )
        used = p.top_level | p.guarded
        for dist in sorted(declared - used):
            if not any(PROVIDED_BY.get(m.replace("-", "_")) == dist for m in used):
                found.append(f"{p.name}: declares {dist} but never imports it")
        for dist, requirement in p.requires.items():
            sibling = by_name.get(dist)
            if sibling and not requirement.specifier.contains(sibling.version):
                found.append(f"{p.name}: requires {requirement}, but {dist} is {sibling.version}")
            if sibling and not requirement.specifier:
                found.append(f"{p.name}: depends on {dist} without a version range")
    found += _cycles({p.name: [d for d in p.requires if d in by_name] for p in packages})
    return found


def _cycles(graph: dict[str, list[str]]) -> list[str]:
    state: dict[str, int] = {}
    found: list[str] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                found.append("dependency cycle: " + " -> ".join([*path, node, nxt]))
            elif nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])
    return found


def main() -> int:
    packages = [
        load(f) for f in sorted((ROOT / "packages").iterdir()) if (f / "pyproject.toml").exists()
    ]
    issues = problems(packages)
    for package in packages:
        siblings = sorted(d for d in package.requires if d.startswith("spt-"))
        print(f"{package.name} {package.version}: {', '.join(siblings) or '-'}")
    for issue in issues:
        print(f"PROBLEM {issue}")
    return 1 if issues else 0


if __name__ == "__main__":
    sys.exit(main())
