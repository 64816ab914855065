"""Check that every package's declared dependencies match what its source imports.

For each ``packages/*/``: every third-party or sibling module imported under ``src/`` must
be a declared dependency (or an optional extra, for imports guarded inside a function or a
``try``), every declared dependency must be imported, sibling ranges must admit the
sibling's current version, and the sibling graph must have no cycle. A sibling extra that
the package's README promises (`` `spt-metrics[sklearn]` ``) must be in its requirement on
that sibling, and exist there. Every third-party dependency has a floor (``>=``), and
packages that declare the same one declare the same range, so that one test environment
tests every package's floor. Each package README's "Depends on" paragraph and the root
README's package table name every declared dependency and every extra with what it adds.

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
    optional: list[Requirement] = field(default_factory=list)
    readme: str = ""
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
    optional = [
        Requirement(r) for reqs in meta.get("optional-dependencies", {}).values() for r in reqs
    ]
    readme = folder / "README.md"
    package = Package(
        folder,
        meta["name"],
        read_version(folder, module),
        requires,
        extras,
        optional,
        readme.read_text() if readme.exists() else "",
    )
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
    found += _promised_extras(packages)
    found += _third_party_ranges(packages)
    found += _stated_dependencies(packages)
    return found


def depends_on_paragraph(readme: str) -> str:
    """The paragraph of a README that starts with "Depends on" ("" if there is none).

    Example:
        >>> depends_on_paragraph("# x\\n\\nDepends on `a`,\\n`b`.\\n\\nMore.")
        'Depends on `a`,\\n`b`.'
    """
    start = readme.find("Depends on")
    return "" if start < 0 else readme[start:].split("\n\n", 1)[0].strip()


def table_cell(readme: str, package: str) -> str:
    """The last cell of the root README's table row for ``package`` ("" if there is none)."""
    for line in readme.splitlines():
        if line.startswith(f"| [{package}]"):
            return line.rstrip(" |").rsplit("|", 1)[-1]
    return ""


def _stated_dependencies(packages: list[Package]) -> list[str]:
    root = packages[0].folder.parent.parent / "README.md"
    table = root.read_text() if root.exists() else ""
    found = []
    for p in packages:
        extras = [name for extra in sorted(p.extras) for name in sorted(p.extras[extra])]
        names = list(dict.fromkeys([*p.requires, *p.extras, *extras]))
        texts = {"its README's 'Depends on'": depends_on_paragraph(p.readme)}
        if table:
            texts["the root README's table"] = table_cell(table, p.name)
        for where, text in texts.items():
            missing = [
                n for n in names if not re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", text)
            ]
            if missing:
                found.append(f"{p.name}: {where} does not name {', '.join(missing)}")
    return found


# `spt-latentviz[plot]` or `"spt-metrics[sklearn,x]"` in a README.
_EXTRA_MENTION = re.compile(r"\b([A-Za-z0-9][A-Za-z0-9._-]*)\[([A-Za-z0-9_,\s-]+)\]")


def promised_extras(readme: str, siblings: set[str]) -> set[tuple[str, str]]:
    """The ``(sibling, extra)`` pairs a README names as ``sibling[extra]``.

    Example:
        >>> sorted(promised_extras("Brings `spt-x[plot]` and `y[a, b]`.", {"spt-x", "y"}))
        [('spt-x', 'plot'), ('y', 'a'), ('y', 'b')]
    """
    found = set()
    for match in _EXTRA_MENTION.finditer(readme):
        if match.group(1) in siblings:
            found |= {(match.group(1), e.strip()) for e in match.group(2).split(",") if e.strip()}
    return found


def _promised_extras(packages: list[Package]) -> list[str]:
    by_name = {p.name: p for p in packages}
    found = []
    for p in packages:
        for sibling, extra in sorted(promised_extras(p.readme, set(by_name) - {p.name})):
            requirement = p.requires.get(sibling)
            where = f"{p.name}: its README promises {sibling}[{extra}]"
            if extra not in by_name[sibling].extras:
                found.append(f"{where}, but {sibling} has no extra {extra!r}")
            elif requirement is None or extra not in requirement.extras:
                written = requirement or "no requirement"
                found.append(f"{where}, but it declares {written}: add the extra")
    return found


def _third_party_ranges(packages: list[Package]) -> list[str]:
    siblings = {p.name for p in packages}
    ranges: dict[str, dict[str, list[str]]] = {}
    found = []
    for p in packages:
        for requirement in [*p.requires.values(), *p.optional]:
            if requirement.name in siblings:
                continue
            if not any(s.operator in (">=", "==", "~=") for s in requirement.specifier):
                found.append(f"{p.name}: {requirement.name} has no floor (declare >=X.Y)")
            spec = ",".join(sorted(str(s) for s in requirement.specifier)) or "(any)"
            ranges.setdefault(requirement.name, {}).setdefault(spec, []).append(p.name)
    for name, by_spec in sorted(ranges.items()):
        if len(by_spec) > 1:
            declared = "; ".join(f"{spec} in {', '.join(who)}" for spec, who in by_spec.items())
            found.append(f"{name}: packages declare different ranges ({declared}); use one")
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
