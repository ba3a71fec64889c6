"""The job library: a record (``job.json``) of every finished generation, in its result folder.

A job's result folder (``<results>/<job id>/``) already holds its audio and is swept with it after
``ACESTEP_RESULT_TTL`` (by the queue for its own records, by :mod:`acestep.jobs.retention` for a
previous process's folders). The record lives there too, so the library needs no store of its own,
survives a restart, and is never older or younger than the files it describes. Nothing here
refreshes a folder's age: a rating rewrites the record with its old times (retention reads them).

A job's uploaded source and reference audio are deleted when it ends; a copy (a hard link where
the file system allows) is kept in the folder, so that restoring a job's parameters restores its
audio too. Only uploads (the caller's own data) are copied: a source named by its server path (an
operator's ``--allowed-path`` folder, an earlier result) is recorded by that path, never copied
into the results folder, which is served to whoever sees the results (docs/security.md).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from loguru import logger

from acestep.jobs.retention import JOB_FOLDER
from acestep.worker.job import Job

RECORD = "job.json"
RECORD_VERSION = 1
# The request fields that name server files, and the name their copy takes in the job's folder.
INPUT_FIELDS = {"src_audio": "input-source", "reference_audio": "input-reference"}
RATINGS = (1, 2, 3, 4, 5)


def _write_json(path: Path, data: dict) -> None:
    """Atomically: a reader sees the old record or the new one, never half of one."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _keep_input(source: Path, folder: Path, stem: str, limit_bytes: int) -> str | None:
    """A copy of ``source`` in ``folder`` (its name there), or None when it is gone, not a regular
    file or over ``limit_bytes``."""
    try:
        if not source.is_file() or source.stat().st_size > limit_bytes:
            return None
    except OSError:
        return None
    target = folder / f"{stem}{source.suffix.lower()}"
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)  # no second copy of the bytes where the file system allows it
    except OSError:
        try:
            shutil.copyfile(source, target)
        except OSError as exc:
            target.unlink(missing_ok=True)
            logger.warning(f"library: could not keep {source.name}: {exc}")
            return None
    return target.name


def record_job(job: Job, limit_bytes: int, uploads: Iterable[Path] = ()) -> Path | None:
    """Write the record of a finished generation job (the queue calls this when a job ends, before
    its ``uploads`` are deleted); returns the record's path, or None for a job that gets none
    (failed, training, LM-only or without audio). Only an input among ``uploads`` is copied."""
    result = job.result
    if job.kind != "generate" or job.state != "succeeded" or job.lm_only or result is None:
        return None
    if not result.items or not job.output_dir:
        return None
    folder = Path(job.output_dir)
    request = job.request.model_dump(mode="json")
    uploaded = {_resolved(Path(path)) for path in uploads}
    inputs = {}
    for name, stem in INPUT_FIELDS.items():
        if not request.get(name) or _resolved(Path(request[name])) not in uploaded:
            continue  # none, or a server file: recorded by its path, restorable while it exists
        kept = _keep_input(Path(request[name]), folder, stem, limit_bytes)
        request[name] = str(folder / kept) if kept else None
        if kept:
            inputs[name] = kept
    record = {
        "version": RECORD_VERSION,
        "id": job.id,
        "created": job.created,
        "started": job.started,
        "finished": job.finished or time.time(),
        "task_type": job.request.effective_task,
        "model": result.model,
        "variant": result.variant,
        "request": request,
        "inputs": inputs,  # the request's file fields, as names in this folder
        "seeds": result.seeds,
        "items": [
            {
                "file": _relative(Path(item.path), folder),
                "seed": item.seed,
                "duration": item.duration,
                "sample_rate": item.sample_rate,
            }
            for item in result.items
        ],
        "timings": result.timings,
        "metas": result.metas,
        "warnings": result.warnings,
        "rating": None,
    }
    path = folder / RECORD
    _write_json(path, record)
    return path


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path.absolute()


def _relative(path: Path, folder: Path) -> str:
    try:
        return str(path.resolve().relative_to(folder.resolve()))
    except ValueError:
        return path.name


class Library:
    """The records in a results folder. ``forget`` (the queue's) drops a deleted job's record from
    the queue, so that it is not answered as still there."""

    def __init__(self, results_dir: Path, forget: Callable[[str], object] | None = None):
        self.results_dir = Path(results_dir)
        self.forget = forget

    def _folder(self, job_id: str) -> Path | None:
        """The folder of ``job_id``, or None for anything that is not a job id (a path, ``..``)."""
        if not isinstance(job_id, str) or not JOB_FOLDER.fullmatch(job_id):
            return None
        return self.results_dir / job_id

    def _read(self, folder: Path) -> dict | None:
        try:
            record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("id") != folder.name:
            return None  # a foreign or damaged file
        return self._with_paths(record, folder)

    def _with_paths(self, record: dict, folder: Path) -> dict:
        """The record with absolute paths where this folder is now (the results folder may move)."""
        request = dict(record.get("request") or {})
        kept = record.get("inputs") or {}
        for name in INPUT_FIELDS:
            path = folder / kept[name] if name in kept else Path(request.get(name) or "")
            request[name] = str(path) if request.get(name) and path.is_file() else None
        files = [folder / item.get("file", "") for item in record.get("items") or []]
        return record | {"request": request, "paths": [str(f) for f in files if f.is_file()]}

    def entries(self, task: str | None = None, model: str | None = None) -> list[dict]:
        """Every readable record, newest first; ``task``/``model`` keep only those of that one."""
        try:
            folders = [Path(e.path) for e in os.scandir(self.results_dir) if JOB_FOLDER.fullmatch(e.name)]
        except OSError:  # no results folder yet
            return []
        records = [r for r in map(self._read, folders) if r is not None]
        records = [
            r
            for r in records
            if (not task or r.get("task_type") == task) and (not model or r.get("model") == model)
        ]
        return sorted(records, key=lambda r: r.get("finished") or 0, reverse=True)

    def get(self, job_id: str) -> dict | None:
        folder = self._folder(job_id)
        return None if folder is None else self._read(folder)

    def delete(self, job_id: str) -> bool:
        """Remove the job's folder (its audio, its record); False when there is no such record."""
        folder = self._folder(job_id)
        if folder is None or self._read(folder) is None:
            return False
        if self.forget is not None:
            self.forget(job_id)
        shutil.rmtree(folder, ignore_errors=True)
        return not folder.exists()

    def rate(self, job_id: str, stars: int | None) -> dict:
        """Save a rating (1-5, or None to clear it); returns the record. KeyError: no such job;
        ValueError: not a rating. The record and its folder keep their times, so a rating never
        keeps a job past the retention TTL."""
        if stars is not None and (isinstance(stars, bool) or stars not in RATINGS):
            raise ValueError(f"rating: one of {', '.join(map(str, RATINGS))}, or none")
        folder = self._folder(job_id)
        path = None if folder is None else folder / RECORD
        if path is None or self._read(folder) is None:
            raise KeyError(job_id)
        times = path.stat(), folder.stat()
        record = json.loads(path.read_text(encoding="utf-8"))
        record["rating"] = stars
        _write_json(path, record)
        for target, before in zip((path, folder), times, strict=True):
            os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
        return self._with_paths(record, folder)

    def tasks(self) -> list[str]:
        return sorted({r["task_type"] for r in self.entries() if r.get("task_type")})

    def models(self) -> list[str]:
        return sorted({r["model"] for r in self.entries() if r.get("model")})
