"""The job queue every face shares: the embedded implementation over the memory manager's dispatcher.

Bounded (a full queue is :class:`QueueFull` -> 429 with Retry-After), FIFO, one GPU worker.
Records stay until the retention policy removes them with their files. ``JobQueue`` is the
interface a Redis backend implements later.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from loguru import logger

from acestep.engine.request import GenerationRequest
from acestep.memory.manager import MemoryManager
from acestep.worker.dispatcher import Job

AVERAGE_WINDOW = 50


class QueueFull(RuntimeError):
    def __init__(self, maxsize: int, retry_after: int):
        super().__init__(f"Server busy: queue is full ({maxsize} jobs waiting); retry in {retry_after} s")
        self.retry_after = retry_after


class JobQueue(Protocol):
    def submit(
        self,
        request: GenerationRequest,
        uses_lm: bool | None = None,
        cleanup: Iterable[Path] = (),
        lm_only: bool = False,
    ) -> Job: ...
    def get(self, task_id: str) -> Job | None: ...
    def position(self, task_id: str) -> int | None: ...
    def cancel(self, task_id: str) -> str: ...
    def stats(self) -> dict: ...
    def close(self) -> None: ...


def _remove(paths: Iterable[Path]) -> None:
    for path in paths:
        try:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        except OSError as exc:
            logger.warning(f"could not remove {path}: {exc}")


class LocalJobQueue:
    """In-process records over the GPU dispatcher (which runs the jobs, in a worker process)."""

    def __init__(
        self,
        manager: MemoryManager,
        results_dir: Path,
        maxsize: int = 200,
        result_ttl_s: int = 86400,
        cleanup_interval_s: int = 300,
    ):
        if manager.dispatcher is None:
            raise RuntimeError("start the memory manager's worker before the job queue")
        self.manager = manager
        self.dispatcher = manager.dispatcher
        self.results_dir = Path(results_dir)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.maxsize = maxsize
        self.result_ttl_s = result_ttl_s
        self.seed_seconds = float(os.environ.get("ACESTEP_AVG_JOB_SECONDS", "5.0"))
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._durations: deque[float] = deque(maxlen=AVERAGE_WINDOW)
        self._failed_durations: deque[float] = deque(maxlen=AVERAGE_WINDOW)
        self._stop = threading.Event()
        self._sweeper = threading.Thread(
            target=self._sweep_loop, args=(cleanup_interval_s,), name="acestep-retention", daemon=True
        )
        self._sweeper.start()

    # -- jobs ---------------------------------------------------------------------------

    def average_seconds(self) -> float:
        with self._lock:
            return sum(self._durations) / len(self._durations) if self._durations else 0.0

    def submit(
        self,
        request: GenerationRequest,
        uses_lm: bool | None = None,
        cleanup: Iterable[Path] = (),
        lm_only: bool = False,
    ) -> Job:
        """Queue a validated job; ``cleanup`` files (uploads) are deleted when it ends; ``lm_only``
        jobs stop after the LM (``/format_input``)."""
        task_id = str(uuid.uuid4())
        inputs = list(cleanup)
        with self._lock:
            depth = self.dispatcher.queue_depth()
            if depth >= self.maxsize:
                average = sum(self._durations) / len(self._durations) if self._durations else 5.0
                raise QueueFull(self.maxsize, max(1, int(average * depth / 2) or 1))
            job = self.manager.submit(
                request,
                self.results_dir / task_id,
                uses_lm=uses_lm,
                job_id=task_id,
                on_done=[lambda job: _remove(inputs), self._record],
                lm_only=lm_only,
            )
            self._jobs[task_id] = job
        return job

    def _record(self, job: Job) -> None:
        if job.started is None or job.finished is None:
            return
        with self._lock:
            target = self._durations if job.state == "succeeded" else self._failed_durations
            target.append(job.finished - job.started)

    def get(self, task_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(task_id)

    def position(self, task_id: str) -> int | None:
        return self.dispatcher.position(task_id)

    def cancel(self, task_id: str) -> str:
        if self.get(task_id) is None:
            return "unknown"
        outcome = self.dispatcher.cancel(task_id)
        return "finished" if outcome == "unknown" else outcome

    def stats(self) -> dict:
        with self._lock:
            jobs = list(self._jobs.values())
            done = list(self._durations)
            failed = list(self._failed_durations)
        counts = {
            state: sum(1 for j in jobs if j.state == state)
            for state in ("queued", "running", "succeeded", "failed")
        }
        return {
            "jobs": {"total": len(jobs), **counts},
            "queue_size": self.dispatcher.queue_depth(),
            "queue_maxsize": self.maxsize,
            # Upstream seeds the average (ACESTEP_AVG_JOB_SECONDS, 5.0) so clients always get a number.
            "avg_job_seconds": round(sum(done) / len(done), 3) if done else self.seed_seconds,
            "avg_job_seconds_measured": bool(done),
            "avg_failed_job_seconds": round(sum(failed) / len(failed), 3) if failed else None,
        }

    # -- retention ----------------------------------------------------------------------

    def sweep(self, now: float | None = None) -> int:
        """Delete finished records older than the TTL, with their result files; returns how many."""
        if self.result_ttl_s <= 0:
            return 0
        now = time.time() if now is None else now
        with self._lock:
            expired = [
                job
                for job in self._jobs.values()
                if job.done.is_set() and job.finished is not None and now - job.finished >= self.result_ttl_s
            ]
            for job in expired:
                del self._jobs[job.id]
        _remove(self.results_dir / job.id for job in expired)
        return len(expired)

    def _sweep_loop(self, interval: int) -> None:
        while not self._stop.wait(interval):
            try:
                removed = self.sweep()
                if removed:
                    logger.info(f"retention: removed {removed} finished jobs and their files")
            except Exception as exc:  # the sweeper must outlive a bad file
                logger.error(f"retention sweep failed: {exc}")

    def close(self) -> None:
        self._stop.set()
        self._sweeper.join(timeout=5)
