import importlib

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
