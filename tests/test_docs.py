"""The user documentation stays true to the tree: links resolve, install.md lists pyproject's extras,
the README opens with its two commands, and the default result folders are ignored by git."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # '#' in code is not a heading
    return {_anchor(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+)$", text, re.M)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(doc: Path) -> None:
    broken = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        path_part, _, anchor = target.partition("#")
        file = (doc.parent / path_part).resolve() if path_part else doc
        if not file.exists():
            broken.append(f"{target} (no {file})")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target} (no heading #{anchor} in {file.name})")
    assert not broken, f"{doc.name}: broken links: {broken}"


def test_anchor_rule_matches_githubs() -> None:
    assert _anchor("Failure modes") == "failure-modes"
    assert _anchor("Out of memory on 6-8 GB GPUs") == "out-of-memory-on-6-8-gb-gpus"
    assert _anchor("REST API (`acestep-api`)") == "rest-api-acestep-api"


def _pyproject_extras() -> set[str]:
    try:
        import tomllib
    except ImportError:  # Python 3.10: the installed metadata lists the same extras
        from importlib.metadata import metadata

        return set(metadata("acestep").get_all("Provides-Extra") or [])
    with (ROOT / "pyproject.toml").open("rb") as handle:
        return set(tomllib.load(handle)["project"]["optional-dependencies"])


def test_install_md_lists_exactly_the_extras_of_pyproject() -> None:
    text = (ROOT / "docs" / "install.md").read_text()
    table = text[text.index("| extra | adds | for |") :].split("\n\n", 1)[0]
    documented = set(re.findall(r"^\| \**`([\w-]+)`\** \|", table, re.M))
    assert documented == _pyproject_extras()


def test_readme_opens_with_the_demo_and_test_commands() -> None:
    first_block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    commands = [line for line in first_block.splitlines() if line.strip() and not line.startswith("#")]
    assert commands == ["bash scripts/demo.sh", "bash scripts/test.sh"]


def test_default_result_folders_are_ignored_by_git() -> None:
    from acestep.cli.generate import DEFAULT_OUTPUT_DIR
    from acestep.serving.config import ServerConfig

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    server = ServerConfig.from_env({"ACESTEP_PROJECT_ROOT": str(ROOT)})
    written = [
        ROOT / DEFAULT_OUTPUT_DIR / "demo" / "stem.wav",  # acestep generate (and scripts/demo.sh)
        server.results_dir / "job-1" / "a.mp3",  # acestep-api, the UI, MCP
        server.uploads_dir / "src_audio_x.wav",
    ]
    relative = [str(path.relative_to(ROOT)) for path in written]
    checked = subprocess.run(
        ["git", "-C", str(ROOT), "check-ignore", "--no-index", *relative], capture_output=True, text=True
    )
    assert sorted(checked.stdout.split()) == sorted(relative), checked.stderr


# Settings read only by test fixtures or accepted for compatibility with no effect of their own.
UNDOCUMENTED_SETTINGS = {
    "ACESTEP_NOOP_SECONDS": "the cluster tests' model-free executor",
    "ACESTEP_DOWNLOAD_SOURCE": "set from the documented --download-source; downloads come from Hugging Face",
}


def test_every_setting_the_code_reads_is_documented() -> None:
    """A limit or switch nobody can find is a limit nobody can set (docs/security.md lists them)."""
    named = set()
    for source in (ROOT / "acestep").rglob("*.py"):
        named |= set(re.findall(r"\bACESTEP_[A-Z0-9_]*[A-Z0-9]\b", source.read_text()))
    docs = "\n".join(p.read_text() for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
    missing = sorted(n for n in named - set(UNDOCUMENTED_SETTINGS) if n not in docs)
    assert not missing, f"settings read by the code but named in no doc: {missing}"
