"""Retention by age: results no record remembers, orphaned uploads, and Gradio's file cache.

The queues drop their own records (and those records' result folders) after
``ACESTEP_RESULT_TTL``. What no record remembers is swept here: result folders of a previous
process (the embedded queue keeps its jobs in memory) after the same TTL, and after
``ACESTEP_UPLOAD_TTL`` the uploads a crash or a previous process left behind and Gradio's cache,
which Gradio itself clears only for the files of the app that is running. The queues run
:meth:`Retention.sweep` at start and every ``ACESTEP_CLEANUP_INTERVAL``; it never removes an input
of a job that is queued or running, nor the folder of a job the queue still knows.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from acestep.settings import current as current_settings
from acestep.settings import value as setting_value

UPLOAD_TTL_ENV = "ACESTEP_UPLOAD_TTL"
# Result folders are named by their job's id (a uuid4): nothing else in a shared output folder
# (ACESTEP_OUTPUT_DIR may be the operator's own) is ever touched.
JOB_FOLDER = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Gradio caches each file in a folder named by its SHA-256 (hex), and receives an upload into a
# tempfile-named file beside them (left behind when the upload is cut off); nothing else is swept.
GRADIO_FOLDER = re.compile(r"[0-9a-f]{64}|tmp[0-9a-z_]{6,}")


def gradio_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where Gradio keeps uploads and the files it serves: Gradio's own rule
    (``gradio.utils.get_upload_folder``), restated so that the API never imports Gradio."""
    env = current_settings() if env is None else env
    explicit = env.get("GRADIO_TEMP_DIR")
    return Path(explicit).expanduser() if explicit else Path(tempfile.gettempdir()) / "gradio"


def input_paths(request) -> list[Path]:
    """The server files a request reads (its source and reference audio), resolved."""
    return [Path(p).resolve() for p in (request.src_audio, request.reference_audio) if p]


@dataclass(frozen=True)
class Retention:
    """What to sweep and after how long (seconds; 0 keeps that kind forever)."""

    results_dir: Path
    result_ttl_s: int
    uploads_dir: Path | None = None
    upload_ttl_s: int = setting_value({}, UPLOAD_TTL_ENV)
    gradio_dir: Path | None = None  # swept with the uploads' age: it holds the UI's uploads

    @classmethod
    def from_env(
        cls,
        results_dir: Path,
        result_ttl_s: int,
        uploads_dir: Path | None,
        env: Mapping[str, str] | None = None,
    ) -> Retention:
        env = current_settings() if env is None else env
        return cls(
            results_dir=Path(results_dir),
            result_ttl_s=result_ttl_s,
            uploads_dir=None if uploads_dir is None else Path(uploads_dir),
            upload_ttl_s=setting_value(env, UPLOAD_TTL_ENV),
            # A server (which has an uploads folder) owns the cache; a bare queue leaves it alone.
            gradio_dir=None if uploads_dir is None else gradio_cache_dir(env),
        )

    def sweep(self, keep_ids: Collection[str], keep_inputs: Iterable[Path], now: float | None = None) -> int:
        """Remove what is older than its TTL; returns how many files and folders went.

        ``keep_ids``: jobs whose result folders stay (the queue's own records, and every job
        queued or running); ``keep_inputs``: resolved files that queued or running jobs read."""
        now = time.time() if now is None else now
        keep = frozenset(keep_inputs)
        removed = 0
        if self.result_ttl_s > 0:
            removed += _sweep_results(self.results_dir, now - self.result_ttl_s, set(keep_ids), keep)
        if self.upload_ttl_s > 0:
            if self.uploads_dir is not None:
                removed += _sweep_tree(self.uploads_dir, now - self.upload_ttl_s, keep)
            if self.gradio_dir is not None:  # GRADIO_TEMP_DIR may be a shared folder: its layout only
                removed += _sweep_tree(self.gradio_dir, now - self.upload_ttl_s, keep, GRADIO_FOLDER)
        return removed


def _holds(path: Path, keep: frozenset[Path]) -> bool:
    """Whether ``path`` is, or (a folder) contains, a file a live job reads."""
    try:
        real = path.resolve()
        folder = stat.S_ISDIR(path.lstat().st_mode)
    except (OSError, RuntimeError):
        return False
    return real in keep or (folder and any(k.is_relative_to(real) for k in keep))


def _newest_mtime(path: Path) -> float:
    """The folder's own mtime or its newest entry's, whichever is later (never following links)."""
    newest = path.lstat().st_mtime
    if stat.S_ISDIR(path.lstat().st_mode):
        for entry in os.scandir(path):
            try:
                newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
            except OSError:
                continue
    return newest


def _remove(path: Path) -> bool:
    try:
        if stat.S_ISDIR(path.lstat().st_mode):  # lstat: a link is removed, never its target
            shutil.rmtree(path)
        else:
            path.unlink()
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        logger.warning(f"retention: could not remove {path}: {exc}")
        return False


def _sweep_results(root: Path, cutoff: float, keep_ids: set[str], keep: frozenset[Path]) -> int:
    removed = 0
    try:
        entries = [Path(e.path) for e in os.scandir(root) if JOB_FOLDER.fullmatch(e.name)]
    except OSError:  # no results folder yet
        return 0
    for path in entries:
        if path.name in keep_ids or _holds(path, keep):
            continue
        try:
            old = _newest_mtime(path) < cutoff
        except OSError:
            continue
        if old and _remove(path):
            removed += 1
    return removed


def _sweep_tree(root: Path, cutoff: float, keep: frozenset[Path], names: re.Pattern | None = None) -> int:
    """Below ``root`` (only in its entries whose names match ``names``, when given): files and
    links older than ``cutoff``, then the folders this left empty or that were empty and old.
    ``root`` itself stays."""
    try:
        entries = [Path(e.path) for e in os.scandir(root) if names is None or names.fullmatch(e.name)]
    except OSError:  # not there (yet)
        return 0
    removed = 0
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            removed += _sweep_folder(entry, cutoff, keep)
        elif _remove_old(entry, cutoff, keep):
            removed += 1
    return removed


def _remove_old(path: Path, cutoff: float, keep: frozenset[Path]) -> bool:
    try:
        old = path.lstat().st_mtime < cutoff
    except OSError:
        return False
    return old and not _holds(path, keep) and _remove(path)


def _sweep_folder(top: Path, cutoff: float, keep: frozenset[Path]) -> int:
    removed = 0
    for folder, dirs, files in os.walk(top, topdown=False):  # never follows links
        here = Path(folder)
        links = [name for name in dirs if (here / name).is_symlink()]  # links to folders: the link
        changed = sum(_remove_old(here / name, cutoff, keep) for name in (*files, *links))
        removed += changed
        try:
            # A folder Gradio has just made for a file it is about to write is new, so it stays.
            if changed or here.lstat().st_mtime < cutoff:
                here.rmdir()  # only when empty
                removed += 1
        except OSError:
            pass
    return removed
