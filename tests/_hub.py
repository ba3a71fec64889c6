"""A stand-in for ``huggingface_hub.snapshot_download`` (no hub is reachable from the tests)."""

from __future__ import annotations

import fnmatch
import shutil
from pathlib import Path


class LocalHub:
    """``snapshot_download`` over local folders (repo id -> folder); records every call.

    Install it with ``monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)``: the
    downloader imports the function from the package when it runs."""

    def __init__(self, repos: dict[str, Path]):
        self.repos = repos
        self.calls: list[dict] = []

    def __call__(self, *, repo_id, local_dir, allow_patterns=None, **options) -> str:
        self.calls.append(
            {"repo_id": repo_id, "local_dir": local_dir, "allow_patterns": allow_patterns} | options
        )
        source = self.repos[repo_id]
        for file in source.rglob("*"):
            name = file.relative_to(source).as_posix()
            wanted = allow_patterns is None or any(fnmatch.fnmatch(name, p) for p in allow_patterns)
            if file.is_file() and wanted:
                (Path(local_dir) / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(file, Path(local_dir) / name)
        return local_dir

    def asked(self) -> list[tuple[str, bool]]:
        """(repo id, force_download) of every call, in order."""
        return [(call["repo_id"], call["force_download"]) for call in self.calls]
