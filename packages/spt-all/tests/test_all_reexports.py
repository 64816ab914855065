import importlib
import re
from pathlib import Path

import pytest

import spt_all as spt

# The short list: the callbacks, then the functions and classes a user calls, by package.
TOP_LEVEL = {
    "spt_core": ["SPTCallback", "set_verbosity"],
    "spt_distance": ["knn_search", "pairwise_distances"],
    "spt_queue": ["OnlineQueue", "RingBuffer", "find_or_create_queue"],
    "spt_trainable": ["LARS", "TrainableCallback"],
    "spt_embed": [],
    "spt_knn": ["OnlineKNN", "knn_predict"],
    "spt_probe": ["OnlineProbe", "probe_step"],
    "spt_latentviz": ["LatentViz", "projection_loss"],
    "spt_metrics": ["MetricsCallback"],
}
CALLBACKS = {
    "SPTCallback", "OnlineQueue", "TrainableCallback", "OnlineKNN", "OnlineProbe", "LatentViz",
    "MetricsCallback",
}  # fmt: skip
README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_top_level_is_the_short_list_and_nothing_else():
    listed = {name for names in TOP_LEVEL.values() for name in names}
    assert set(spt.__all__) == listed | {"__version__", "versions"}
    assert len(spt.__all__) == len(set(spt.__all__))
    assert set(spt.__all__) >= CALLBACKS


@pytest.mark.parametrize("package", sorted(TOP_LEVEL))
def test_each_top_level_name_is_its_packages_object(package):
    home = importlib.import_module(package)
    for name in TOP_LEVEL[package]:
        assert name in home.__all__, f"{package}.{name} is not public there"
        assert getattr(spt, name) is getattr(home, name), f"{package}.{name}"


def test_helpers_stay_in_their_packages():
    # The examples: distance names and LatentViz's learning rate are not spt.* names.
    assert not hasattr(spt, "METRICS")
    assert not hasattr(spt, "DEFAULT_LR")
    for package in spt.PACKAGES:
        for name in package.__all__:
            if name not in spt.__all__:
                assert not hasattr(spt, name), f"{package.__name__}.{name} leaks to spt_all"


def test_every_package_is_an_attribute_with_all_its_public_names():
    for package in spt.PACKAGES:
        short = package.__name__.removeprefix("spt_")
        assert getattr(spt, short) is package
        for name in package.__all__:
            assert hasattr(getattr(spt, short), name), f"spt.{short}.{name}"


def test_the_readme_table_documents_exactly_the_top_level():
    text = README.read_text()
    rows = re.findall(r"^\| (spt-[a-z]+) \| `spt\.([a-z]+)` \| (.+) \|$", text, re.MULTILINE)
    documented = {
        distribution.replace("-", "_"): (short, re.findall(r"`(\w+)`", names))
        for distribution, short, names in rows
    }
    assert documented.keys() == TOP_LEVEL.keys()
    for package, (short, names) in documented.items():
        assert package == f"spt_{short}"
        assert sorted(names) == sorted(TOP_LEVEL[package]), package


_STALE = (
    "{} is {} in the source but not in the installed metadata: an editable install built "
    "before a release keeps the old version; rebuild the environment (`hatch env prune`)"
)


def test_versions_reports_every_installed_package():
    reported = spt.versions()
    for package in spt.PACKAGES:
        distribution = package.__name__.replace("_", "-")
        imported = importlib.import_module(package.__name__).__version__
        assert reported[distribution] == imported, _STALE.format(distribution, imported)
    assert reported["spt-all"] == spt.__version__, _STALE.format("spt-all", spt.__version__)


def test_every_workspace_package_is_reexported_and_versioned():
    # spt-trainable (split out of spt-core) is reachable and reported like every other.
    import spt_trainable

    assert spt_trainable in spt.PACKAGES
    assert spt.TrainableCallback is spt_trainable.TrainableCallback
    assert spt.LARS is spt_trainable.LARS
    assert spt.versions()["spt-trainable"] == spt_trainable.__version__
    # spt_all's own version, never a sibling's.
    assert spt.__version__ == importlib.import_module("spt_all.__about__").__version__


def test_packages_names_every_package_of_the_workspace():
    packages = Path(__file__).resolve().parents[2]
    if not (packages / "spt-core" / "pyproject.toml").is_file():
        pytest.skip("run outside the workspace: no sibling package folders")
    folders = {p.name for p in packages.iterdir() if (p / "pyproject.toml").is_file()}
    listed = {package.__name__.replace("_", "-") for package in spt.PACKAGES}
    assert listed == folders - {"spt-all"}
    assert set(TOP_LEVEL) == {package.__name__ for package in spt.PACKAGES}
