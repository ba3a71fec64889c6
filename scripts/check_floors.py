"""Resolve every dependency of pyproject.toml at exactly its floor, all extras together.

A floor (``>=X``) is a promise that X works; this checks the promises can be kept at once: each
direct requirement is pinned to its floor's series (``==X.*``) and uv's resolver must find one
environment holding them all, for the oldest and the newest Python we declare. Nothing is
installed (the resolver reads package metadata only, so no torch wheel is downloaded).
Run: ``python scripts/check_floors.py``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
NEWEST_PYTHON = "3.13"


def floor_pins(pyproject: dict) -> list[str]:
    """``name[extras]==floor; marker`` for each direct requirement (self-references skipped)."""
    project = pyproject["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    pins: dict[str, str] = {}
    for text in requirements:
        req = Requirement(text)
        if req.name == project["name"]:
            continue
        floors = [spec.version for spec in req.specifier if spec.operator in (">=", "==", "~=")]
        if not floors:
            raise SystemExit(f"{text!r} has no floor: every direct dependency needs one")
        floor = floors[0]
        if floor not in req.specifier:
            raise SystemExit(f"{text!r}: its floor {floor} is outside its own range")
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        marker = f"; {req.marker}" if req.marker else ""
        # ==X.* (PEP 440 prefix match): the floor's own series, e.g. >=0.9 may land on 0.9.0.2.
        pin = f"{req.name}{extras}=={floor}.*{marker}"
        if pins.setdefault(req.name, pin) != pin:
            raise SystemExit(f"{req.name} is declared twice with different floors")
    return sorted(pins.values())


def main() -> int:
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = floor_pins(pyproject)
    oldest = pyproject["project"]["requires-python"].removeprefix(">=")
    with tempfile.TemporaryDirectory() as tmp:
        floors = Path(tmp) / "floors.txt"
        floors.write_text("\n".join(pins) + "\n")
        for python in (oldest, NEWEST_PYTHON):
            result = subprocess.run(
                [uv, "pip", "compile", str(floors), "--python-version", python]
                + ["--resolution", "lowest-direct", "--no-header", "-q"],
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                message = f"floors do not resolve together on Python {python}:\n{result.stderr}"
                print(message, file=sys.stderr)
                return 1
            print(f"floors resolve together on Python {python}: {len(pins)} direct requirements")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
