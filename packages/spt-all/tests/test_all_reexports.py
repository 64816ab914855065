import importlib
from pathlib import Path

import pytest

import spt_all as spt


def test_every_public_name_of_every_package_is_reexported():
    for package in spt.PACKAGES:
        for name in package.__all__:
            if name == "__version__":
                continue
            assert getattr(spt, name) is getattr(package, name), f"{package.__name__}.{name}"
            assert name in spt.__all__


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
    # spt-trainable (split out of spt-core) is re-exported and reported like every other.
    import spt_trainable

    assert spt_trainable in spt.PACKAGES
    assert spt.TrainableCallback is spt_trainable.TrainableCallback
    assert spt.LARS is spt_trainable.LARS
    assert spt.versions()["spt-trainable"] == spt_trainable.__version__
    # Its star import brings its own __version__ (0.1.0), which must not replace spt-all's.
    assert spt.__version__ == importlib.import_module("spt_all.__about__").__version__


def test_packages_names_every_package_of_the_workspace():
    packages = Path(__file__).resolve().parents[2]
    if not (packages / "spt-core" / "pyproject.toml").is_file():
        pytest.skip("run outside the workspace: no sibling package folders")
    folders = {p.name for p in packages.iterdir() if (p / "pyproject.toml").is_file()}
    listed = {package.__name__.replace("_", "-") for package in spt.PACKAGES}
    assert listed == folders - {"spt-all"}
