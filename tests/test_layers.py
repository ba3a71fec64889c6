"""The layer contract (pyproject.toml ``[tool.importlinter]``): nothing imports upward.

Bottom to top: vocabulary and settings -> memory -> checkpoints -> engine -> lm/lora -> worker ->
jobs -> faces -> cli. import-linter checks every import statement, those inside functions too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# import-linter's Python entry takes the config the same way from its floor (2.1) to today.
LINT = (
    "import sys; from importlinter.cli import lint_imports; "
    "sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True))"
)


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", LINT, str(ROOT / "pyproject.toml")],
        cwd=root,
        env={"PYTHONPATH": os.pathsep.join([str(root), *sys.path[1:]]), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_nothing_imports_upward() -> None:
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    """The contract bites: the vocabulary importing the CLI (even inside a function) fails it."""
    shutil.copytree(ROOT / "acestep", tmp_path / "acestep", ignore=shutil.ignore_patterns("__pycache__"))
    tasks = tmp_path / "acestep" / "tasks.py"
    tasks.write_text(tasks.read_text() + "\n\ndef _upward():\n    import acestep.cli.generate  # noqa\n")
    result = lint(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "acestep.tasks -> acestep.cli.generate" in result.stdout


def test_every_declared_exception_says_why() -> None:
    """An exception to the layers is allowed only with a comment saying why, right above it."""
    contract = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    lines = (ROOT / "pyproject.toml").read_text().splitlines()
    for ignored in contract.get("ignore_imports", []):
        index = next(i for i, line in enumerate(lines) if f'"{ignored}"' in line)
        above = lines[index - 1].strip()
        while above.startswith('"') and index > 0:  # a group of exceptions shares one comment
            index -= 1
            above = lines[index - 1].strip()
        assert above.startswith("#"), f"{ignored} has no comment saying why"
