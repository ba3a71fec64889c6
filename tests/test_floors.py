"""The dependency floors: every direct requirement has one, and scripts/check_floors.py pins each
to its floor's series. The resolver run itself is in .ci/run (it needs the package index)."""

from __future__ import annotations

import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from check_floors import floor_pins  # noqa: E402

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_direct_requirement_is_pinned_to_its_floor_series():
    pins = {Requirement(pin).name: Requirement(pin) for pin in floor_pins(PYPROJECT)}
    assert str(pins["diffusers"].specifier) == "==0.42.1.*"
    assert "torch" in pins and "gradio" in pins and "acestep" not in pins


def test_installed_versions_meet_the_floors():
    """The environment the suite runs in satisfies every floor (a floor above what is tested fails)."""
    for pin in floor_pins(PYPROJECT):
        req = Requirement(pin)
        if req.marker is not None and not req.marker.evaluate():
            continue
        floor = Version(str(req.specifier).removeprefix("==").removesuffix(".*"))
        assert Version(version(req.name)) >= floor, req.name


@pytest.mark.parametrize(
    ("requirement", "reason"),
    [("requests", "has no floor"), ("requests>=2,<1", "outside its own range")],
)
def test_a_requirement_without_a_usable_floor_is_refused(requirement, reason):
    project = {"project": {"name": "x", "dependencies": [requirement]}}
    with pytest.raises(SystemExit, match=reason):
        floor_pins(project)


def test_a_package_declared_twice_with_two_floors_is_refused():
    project = {
        "project": {
            "name": "x",
            "dependencies": ["numpy>=1.26"],
            "optional-dependencies": {"fast": ["numpy>=2.0"]},
        }
    }
    with pytest.raises(SystemExit, match="declared twice"):
        floor_pins(project)
