"""Every patches/ entry has its four parts and names regression tests that exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PATCHES = sorted(p for p in (ROOT / "patches").glob("*.md") if p.name != "README.md")
TEST_LINE = re.compile(r"^Regression test: `(tests/[\w/]+\.py)::(\w+)`", re.MULTILINE)


def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}


def test_there_are_patches():
    assert len(PATCHES) >= 10


@pytest.mark.parametrize("patch", PATCHES, ids=lambda p: p.name)
def test_patch_names_existing_regression_tests(patch):
    text = patch.read_text()
    for part in ("**Symptom.**", "**Cause.**", "**Our behaviour.**"):
        assert part in text, f"{patch.name} lacks {part}"
    tests = TEST_LINE.findall(text)
    assert tests, f"{patch.name} names no regression test"
    for file, name in tests:
        path = ROOT / file
        assert path.is_file(), f"{patch.name}: {file} does not exist"
        assert name in _test_functions(path), f"{patch.name}: {file} has no test {name}"
