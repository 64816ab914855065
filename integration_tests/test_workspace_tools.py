"""The workspace tools: dependency check, release helper, archive check, isolation plan, demo."""

import doctest
import importlib
import io
import shutil
import subprocess
import sys
import tomllib
from contextlib import redirect_stdout
from pathlib import Path

import lightning as L
import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("check_deps", "check_dists", "check_isolation", "release")


@pytest.fixture
def tools(monkeypatch):
    """The modules of ``tools/`` (imported from there, as the scripts import each other)."""
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    return {name: importlib.import_module(name) for name in TOOLS}


def copy_packages(target: Path, names: list[str] | None = None) -> Path:
    """A copy of ``packages/`` (pyproject, README, CHANGELOG, LICENSE, src) under ``target``,
    with the root README when every package is copied."""
    if names is None:
        shutil.copy(ROOT / "README.md", target / "README.md")
    for folder in sorted((ROOT / "packages").iterdir()):
        if names is None or folder.name in names:
            shutil.copytree(
                folder,
                target / "packages" / folder.name,
                ignore=shutil.ignore_patterns("__pycache__", "tests"),
            )
    return target


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


def project(path: Path) -> dict:
    return tomllib.loads(path.read_text())["project"]


@pytest.mark.parametrize("name", TOOLS)
def test_tool_docstring_examples(tools, name):
    results = doctest.testmod(tools[name], optionflags=doctest.NORMALIZE_WHITESPACE)
    assert results.failed == 0
    assert results.attempted > 0 or name == "check_isolation"


# ----------------------------------------------------------------------------- check_deps


def test_declared_dependencies_match_the_imports():
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "check_deps.py")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "spt-queue" in done.stdout


def workspace_problems(tools, root: Path) -> list[str]:
    check_deps = tools["check_deps"]
    return check_deps.problems([check_deps.load(f) for f in sorted((root / "packages").iterdir())])


def test_check_deps_fails_when_a_sibling_requirement_drops_a_promised_extra(tools, tmp_path):
    root = copy_packages(tmp_path)
    assert workspace_problems(tools, root) == []
    # The 0.2.0 release of spt-all: its README promises both extras, its pyproject had none.
    edit(root / "packages/spt-all/pyproject.toml", '"spt-metrics[sklearn]>=', '"spt-metrics>=')
    found = workspace_problems(tools, root)
    assert len(found) == 1, found
    assert "spt-all" in found[0] and "spt-metrics[sklearn]" in found[0], found


def test_check_deps_fails_when_a_readme_promises_an_extra_that_does_not_exist(tools, tmp_path):
    root = copy_packages(tmp_path)
    readme = root / "packages/spt-all/README.md"
    readme.write_text(readme.read_text() + "\nAlso `spt-knn[faiss]`.\n")
    found = workspace_problems(tools, root)
    assert found == [
        "spt-all: its README promises spt-knn[faiss], but spt-knn has no extra 'faiss'"
    ]


def test_check_deps_fails_when_packages_declare_different_floors(tools, tmp_path):
    root = copy_packages(tmp_path)
    edit(root / "packages/spt-knn/pyproject.toml", '"torchmetrics>=1.9"', '"torchmetrics>=1.0"')
    found = workspace_problems(tools, root)
    assert len(found) == 1, found
    assert found[0].startswith("torchmetrics: packages declare different ranges"), found
    assert ">=1.0 in spt-knn" in found[0] and "spt-metrics" in found[0], found


def test_check_deps_fails_on_a_third_party_dependency_without_floor(tools, tmp_path):
    root = copy_packages(tmp_path)
    edit(root / "packages/spt-latentviz/pyproject.toml", '"matplotlib>=3.11"', '"matplotlib"')
    assert workspace_problems(tools, root) == [
        "spt-latentviz: matplotlib has no floor (declare >=X.Y)"
    ]


def test_check_deps_fails_when_a_readme_leaves_a_dependency_out(tools, tmp_path):
    root = copy_packages(tmp_path)
    edit(root / "packages/spt-queue/README.md", "`spt-core`, `torch`, `lightning`.", "`spt-core`.")
    edit(root / "README.md", "numpy; `[plot]`: matplotlib, pillow; `[wandb]`: wandb |", "numpy |")
    assert workspace_problems(tools, root) == [
        "spt-latentviz: the root README's table does not name plot, wandb, matplotlib, pillow",
        "spt-queue: its README's 'Depends on' does not name torch, lightning",
    ]


def test_third_party_floors_are_the_same_everywhere():
    floors: dict[str, set[str]] = {}
    for pyproject in ROOT.glob("packages/*/pyproject.toml"):
        meta = project(pyproject)
        extras = [r for reqs in meta.get("optional-dependencies", {}).values() for r in reqs]
        for requirement in map(Requirement, [*meta["dependencies"], *extras]):
            if not requirement.name.startswith("spt-"):
                floors.setdefault(requirement.name, set()).add(str(requirement.specifier))
    assert {name: len(ranges) for name, ranges in floors.items()} == dict.fromkeys(floors, 1)
    assert floors["torch"] == {">=2.13"} and floors["torchmetrics"] == {">=1.9"}


def test_spt_all_brings_the_extras_its_readme_promises():
    requires = {
        r.name: r
        for r in map(Requirement, project(ROOT / "packages/spt-all/pyproject.toml")["dependencies"])
    }
    assert requires["spt-latentviz"].extras == {"plot"}
    assert requires["spt-metrics"].extras == {"sklearn"}


# ----------------------------------------------------------------------------- release


def test_release_bumps_version_changelog_and_dependent_ranges(tools, tmp_path):
    root = copy_packages(tmp_path, ["spt-core", "spt-queue"])
    release = tools["release"].release
    core = root / "packages" / "spt-core"
    (core / "CHANGELOG.md").write_text("# Changelog\n\n## Unreleased\n- New thing.\n")
    version, dependents = release(root, "spt-core", "minor", ["Another."])
    assert str(version).endswith(".0") and version.minor >= 2
    assert f'__version__ = "{version}"' in (core / "src/spt_core/__about__.py").read_text()
    changelog = (core / "CHANGELOG.md").read_text()
    assert f"## {version}\n- Another.\n- New thing." in changelog
    assert dependents == ["spt-queue"]
    queue = (root / "packages/spt-queue/pyproject.toml").read_text()
    assert f'"spt-core>={version.major}.{version.minor},<0.{version.minor + 1}"' in queue


def test_release_keeps_extras_and_markers_of_dependent_requirements(tools, tmp_path):
    root = copy_packages(tmp_path, ["spt-metrics", "spt-all", "spt-core"])
    pyproject = root / "packages/spt-all/pyproject.toml"
    old_range = tools["release"].compatible_range(
        tools["check_deps"].read_version(root / "packages/spt-metrics", "spt_metrics")
    )
    # A TOML literal string with a marker, and a basic string whose marker holds quotes.
    edit(
        pyproject,
        f'"spt-metrics[sklearn]{old_range}"',
        f"'spt-metrics[sklearn]{old_range}; python_version >= \"3.11\"'",
    )
    edit(
        pyproject,
        "[project.urls]",
        "[project.optional-dependencies]\n"
        f"win = [\"spt-metrics{old_range}; sys_platform == 'win32'\"]\n\n[project.urls]",
    )
    version, dependents = tools["release"].release(root, "spt-metrics", "minor", [])
    assert dependents == ["spt-all"]
    meta = project(pyproject)  # still valid TOML
    new_range = tools["release"].compatible_range(version)
    written = {
        str(r)
        for r in map(Requirement, [*meta["dependencies"], *meta["optional-dependencies"]["win"]])
        if r.name == "spt-metrics"
    }
    assert written == {
        str(Requirement(f'spt-metrics[sklearn]{new_range}; python_version >= "3.11"')),
        str(Requirement(f'spt-metrics{new_range}; sys_platform == "win32"')),
    }
    # A requirement that already admits the new version is left as it was.
    core_range = tools["release"].compatible_range(
        tools["check_deps"].read_version(root / "packages/spt-core", "spt_core")
    )
    assert f"spt-core{core_range}" in meta["dependencies"]


def test_release_leaves_a_dependent_whose_range_admits_the_new_version(tools, tmp_path):
    root = copy_packages(tmp_path, ["spt-core", "spt-queue"])
    pyproject = root / "packages/spt-queue/pyproject.toml"
    core = tools["check_deps"].read_version(root / "packages/spt-core", "spt_core")
    floor = tools["release"].compatible_range(core).split(",")[0]
    edit(pyproject, f'"spt-core{tools["release"].compatible_range(core)}"', f'"spt-core{floor},<1"')
    before = pyproject.read_text()
    _, dependents = tools["release"].release(root, "spt-core", "minor", [])
    assert dependents == []
    assert pyproject.read_text() == before


@pytest.mark.parametrize(("part", "expected"), [("major", "1.0.0"), ("patch", "0.3.5")])
def test_bump_parts(tools, part, expected):
    assert str(tools["release"].bump(Version("0.3.4"), part)) == expected


# ----------------------------------------------------------------------------- check_dists

GOOD_METADATA = """\
Metadata-Version: 2.4
Name: spt-x
Version: 0.1.0
Project-URL: Homepage, https://github.com/spt-dev/spt
Project-URL: Documentation, https://github.com/spt-dev/spt/tree/main/packages/spt-x#readme
Project-URL: Changelog, https://github.com/spt-dev/spt/blob/main/packages/spt-x/CHANGELOG.md
Project-URL: Issues, https://github.com/spt-dev/spt/issues
License-Expression: MIT
License-File: LICENSE
Classifier: Programming Language :: Python :: 3.11
Classifier: Programming Language :: Python :: 3.12
Classifier: Typing :: Typed
Requires-Python: >=3.11
"""


def test_check_dists_accepts_complete_metadata(tools):
    assert tools["check_dists"].metadata_problems("wheel", GOOD_METADATA) == []


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("License-Expression: MIT\n", "", "License-Expression is None"),
        ("License-File: LICENSE\n", "", "no License-File"),
        ("Project-URL: Issues, https://github.com/spt-dev/spt/issues\n", "", "Project-URL Issues"),
        ("https://github.com/spt-dev/spt/issues", "https://example.org/x", "not under"),
        ("Classifier: Typing :: Typed\n", "", "Typing :: Typed"),
        ("Python :: 3.11\n", "Python :: 3.10\n", "excluded by Requires-Python"),
        ("Requires-Python: >=3.11", "Requires-Python: >=3.10", "do not run from 3.10"),
        ("Classifier: Programming Language :: Python :: 3.12\n", "", "do not run from"),
        ("Python :: 3.12", "Python :: 3.13", "without a gap"),
    ],
)
def test_check_dists_reports_missing_or_wrong_metadata(tools, old, new, problem):
    metadata = GOOD_METADATA.replace(old, new, 1)
    assert metadata != GOOD_METADATA
    if old.startswith("Classifier: Programming Language :: Python :: 3.12"):
        metadata = metadata.replace("Requires-Python: >=3.11", "Requires-Python: >=3.10")
    found = tools["check_dists"].metadata_problems("wheel", metadata)
    assert any(problem in line for line in found), found


@pytest.fixture
def hatch():
    if shutil.which("hatch") is None:
        pytest.skip("hatch is not on PATH (CI installs it)")


def test_check_dists_passes_on_the_packages_with_extras(hatch):
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "check_dists.py"), "spt-all", "spt-metrics"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(" ok ") == 2, done.stdout


def test_check_dists_fails_on_a_package_without_licence(hatch, tools, tmp_path):
    root = copy_packages(tmp_path / "work", ["spt-queue"])
    folder = root / "packages/spt-queue"
    (folder / "LICENSE").unlink()
    edit(folder / "pyproject.toml", 'license-files = ["LICENSE"]\n', "")
    (tmp_path / "out").mkdir()
    found = tools["check_dists"].check(folder, tmp_path / "out")
    assert "wheel: no .dist-info/licenses/LICENSE" in found, found
    assert "sdist: no LICENSE" in found, found
    assert "wheel: no License-File: LICENSE" in found, found


def test_every_package_ships_the_repository_licence():
    licence = (ROOT / "LICENSE").read_text()
    assert "MIT License" in licence and "Copyright (c) 2026 the spt developers" in licence
    for folder in (ROOT / "packages").iterdir():
        assert (folder / "LICENSE").read_text() == licence, folder.name
        meta = project(folder / "pyproject.toml")
        assert meta["license"] == "MIT" and meta["license-files"] == ["LICENSE"], folder.name


# ----------------------------------------------------------------------------- check_isolation


def test_isolation_runs_packages_with_extras_twice(tools):
    variants = tools["check_isolation"].variants
    assert variants("spt-metrics") == ["spt-metrics", "spt-metrics[sklearn]"]
    assert variants("spt-metrics", "only") == ["spt-metrics[sklearn]"]
    assert variants("spt-metrics", "none") == ["spt-metrics"]
    assert variants("spt-queue") == ["spt-queue"]
    assert variants("spt-latentviz", "only")[0].startswith("spt-latentviz[plot")


def test_isolation_installs_a_packages_test_group_and_only_that(tools):
    test_group = tools["check_isolation"].test_group
    assert test_group("spt-distance") == ["spt-core>=0.5,<0.6"]
    assert test_group("spt-queue") == []


# ----------------------------------------------------------------------------- demo


class _Scored(L.LightningModule):
    """Logs an accuracy every validation epoch and a map score only in epoch 0."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("eval/knn_accuracy", 0.5 + self.current_epoch / 10)
        if self.current_epoch == 0:
            self.log("eval/latent_trustworthiness", 0.9)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_demo_table_shows_the_map_score_only_where_it_was_measured(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    demo = importlib.import_module("demo")
    history = demo.History()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), 4)
    trainer = L.Trainer(
        max_epochs=3,
        logger=[history],
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(_Scored(), data, data)
    printed = io.StringIO()
    with redirect_stdout(printed):
        demo.report(history, tmp_path, 1.0)
    accuracy = printed.getvalue().strip().split("\n\n")[0].splitlines()
    assert accuracy[0].split()[:3] == ["epoch", "kNN", "kNN"]
    rows = [line.split() for line in accuracy[1:]]
    assert [row[0] for row in rows] == ["0", "1", "2"]
    assert [row[1] for row in rows] == ["0.500", "0.600", "0.700"]
    # Nothing else was logged: blank cells, and the map score at its column in epoch 0 only.
    assert [len(row) for row in rows] == [3, 2, 2]
    map_column = 5 + 9 * [title for title, _ in demo.History.ACCURACY].index("map")
    assert accuracy[1][map_column : map_column + 9].strip() == "0.900"


@pytest.fixture
def demo_umap(monkeypatch):
    """``tools/demo_umap.py``, the demo's comparison of its last latent map with UMAP's."""
    pytest.importorskip("umap")
    pytest.importorskip("matplotlib")
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    return importlib.import_module("demo_umap")


def test_demo_scores_its_map_and_umaps_with_the_same_functions(demo_umap, tmp_path):
    from spt_latentviz import knn_recall, trustworthiness

    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 3
    features = 6.0 * torch.randn(3, 10, generator=generator)[labels]
    features += torch.randn(200, 10, generator=generator)
    given = features[:, :2].numpy()  # a 2D map: two of the ten coordinates
    path = tmp_path / "side_by_side.png"
    maps = demo_umap.compare_maps(features, labels.numpy(), given, path, seed=0, warm_up=False)
    assert list(maps) == ["LatentViz", "UMAP"]
    assert maps["LatentViz"]["coordinates"] is given
    assert maps["UMAP"]["coordinates"].shape == (200, 2)
    for drawn in maps.values():
        low = torch.as_tensor(drawn["coordinates"], dtype=torch.float32)
        assert drawn["trustworthiness"] == trustworthiness(features, low, 15).item()
        assert drawn["knn_recall"] == knn_recall(features, low, 15).item()
    assert maps["UMAP"]["seconds"] > 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_reads_the_rows_of_the_last_map_after_the_fit(
    demo_umap, tmp_path, monkeypatch, capsys
):
    from spt_core.testing import Backbone, DictDataset, quiet_trainer
    from spt_latentviz import LatentViz, projection_mlp
    from spt_queue import find_queue

    generator = torch.Generator().manual_seed(0)
    data = DictDataset(x=torch.randn(100, 8, generator=generator), label=torch.arange(100) % 3)
    viz = LatentViz(
        "latent",
        "embedding",
        "label",
        projection_mlp(4),
        queue_length=60,
        k_neighbors=5,
        update_interval=1,
        plot_interval=1,
        save_dir=str(tmp_path / "maps"),
    )
    trainer = quiet_trainer(max_epochs=2, callbacks=[viz])
    train = torch.utils.data.DataLoader(data, batch_size=16, shuffle=True)
    val = torch.utils.data.DataLoader(data, batch_size=50)
    trainer.fit(Backbone(8, width=4), train, val)  # the features move every batch
    assert demo_umap.find_latent_viz(trainer, "latent") is viz
    features, labels = demo_umap.drawn_rows(trainer, viz)
    drawn = demo_umap.last_map(trainer, viz, labels)
    assert int(drawn["epoch"]) == 1 and features.shape == (60, 4)
    scored = demo_umap.scores(features, drawn["coordinates"], 5, "euclidean")
    assert scored["trustworthiness"] == pytest.approx(float(drawn["trustworthiness"]), abs=1e-6)
    assert scored["knn_recall"] == pytest.approx(float(drawn["knn_recall"]), abs=1e-6)
    monkeypatch.setitem(sys.modules, "umap", None)  # umap-learn missing: one line, no picture
    demo_umap.report(trainer, tmp_path, 0)
    assert capsys.readouterr().out.strip().startswith("latent map vs UMAP: skipped, umap-learn")
    assert not (tmp_path / "latent_vs_umap.png").exists()
    # A batch after the map: the queues no longer hold the rows drawn.
    for key, rows in (("embedding", torch.zeros(3, 4)), ("label", torch.full((3,), 7))):
        find_queue(trainer, key).append(rows)
    with pytest.raises(RuntimeError, match="not the rows drawn"):
        demo_umap.last_map(trainer, viz, demo_umap.drawn_rows(trainer, viz)[1])
