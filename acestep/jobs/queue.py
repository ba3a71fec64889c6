"""The job queue every face shares: the embedded implementation over the supervisor's dispatcher.

Bounded (a full queue is :class:`QueueFull` -> 429 with Retry-After), FIFO, one GPU worker.
Records stay until the retention policy removes them with their files. ``JobQueue`` is the
interface both backends implement: this one, and ``acestep.cluster.queue.RedisJobQueue`` when
``ACESTEP_QUEUE_URL`` is set. The faces read job snapshots from ``get`` and never hold one.
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from loguru import logger

from acestep.checkpoints.layout import CheckpointPaths
from acestep.checkpoints.slots import ModelSlots
from acestep.checkpoints.task_support import require_task
from acestep.jobs.library import record_job
from acestep.jobs.retention import Retention, input_paths
from acestep.jobs.uploads import max_upload_bytes
from acestep.lora.selection import LoraSelection
from acestep.memory.manager import worker_summary
from acestep.request import GenerationRequest
from acestep.settings import current as current_settings
from acestep.settings import value as setting_value
from acestep.tasks import flow_edit_applies
from acestep.training.request import TrainingRequest
from acestep.worker.dispatcher import Job
from acestep.worker.supervisor import Supervisor

AVERAGE_WINDOW = 50
# Job-duration histogram bounds (seconds), shared with the Redis backend and /metrics.
DURATION_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


def average_fields(done: list[float], failed: list[float], seed_seconds: float) -> dict:
    """The ``/v1/stats`` averages of recent job times. Upstream seeds the average
    (``ACESTEP_AVG_JOB_SECONDS``, 5.0) so that clients always get a number."""
    return {
        "avg_job_seconds": round(sum(done) / len(done), 3) if done else seed_seconds,
        "avg_job_seconds_measured": bool(done),
        "avg_failed_job_seconds": round(sum(failed) / len(failed), 3) if failed else None,
    }


class DurationHistogram:
    """Cumulative bucket counts, sum and count of job durations (Prometheus' histogram shape)."""

    def __init__(self) -> None:
        self.counts = [0] * len(DURATION_BUCKETS)
        self.sum = 0.0
        self.count = 0

    def add(self, seconds: float) -> None:
        for index, bound in enumerate(DURATION_BUCKETS):
            if seconds <= bound:
                self.counts[index] += 1
        self.sum += seconds
        self.count += 1

    def as_dict(self) -> dict:
        return {
            "buckets": [[b, c] for b, c in zip(DURATION_BUCKETS, self.counts, strict=True)],
            "sum": self.sum,
            "count": self.count,
        }


class QueueFull(RuntimeError):
    def __init__(self, maxsize: int, retry_after: int):
        super().__init__(f"Server busy: queue is full ({maxsize} jobs waiting); retry in {retry_after} s")
        self.retry_after = retry_after


class QueueUnavailable(RuntimeError):
    """The queue's store (Redis) cannot be reached: a 503 with Retry-After. A submit that raises it
    queued nothing, except when Redis stored the job and then lost its answer: that job runs."""

    retry_after = 5


class JobQueue(Protocol):
    routes_by_model: bool  # whether ``submit(model=...)`` picks among several models

    def submit(
        self,
        request: GenerationRequest,
        uses_lm: bool | None = None,
        cleanup: Iterable[Path] = (),
        lm_only: bool = False,
        model: str | None = None,
    ) -> Job: ...
    def submit_training(self, request: TrainingRequest, dataset: str, model: str | None = None) -> Job: ...
    def get(self, task_id: str) -> Job | None: ...
    def position(self, task_id: str) -> int | None: ...
    def cancel(self, task_id: str) -> str: ...
    def wait(self, task_id: str, timeout: float | None = None) -> Job: ...
    def workers(self) -> list[dict]: ...
    def model_state(self) -> str: ...
    def stats(self) -> dict: ...
    def close(self) -> None: ...


def remove_paths(paths: Iterable[Path]) -> None:
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

    routes_by_model = False  # one worker: a job's ``model`` is loaded there on demand (no routing)

    def __init__(
        self,
        manager: Supervisor,
        results_dir: Path,
        maxsize: int = 200,
        result_ttl_s: int = 86400,
        cleanup_interval_s: int = 300,
        model_name: str = "",
        loras: LoraSelection | None = None,
        checkpoint: CheckpointPaths | None = None,
        uploads_dir: Path | None = None,
        slots: ModelSlots | None = None,
    ):
        """``slots``: the models a job may name (None: only the served one; a name is not checked);
        ``loras`` fills in and checks each request's LoRA adapters (None: taken as they are);
        ``checkpoint``, the served one, refuses a task its variant cannot run (None: no check);
        ``uploads_dir`` is swept by age with Gradio's cache (None: only the results are)."""
        if manager.dispatcher is None:
            raise RuntimeError("start the supervisor's worker before the job queue")
        self.manager = manager
        self.model_name = model_name
        self.loras = loras
        self.checkpoint = checkpoint
        self.slots = slots
        self.dispatcher = manager.dispatcher
        self.results_dir = Path(results_dir)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.maxsize = maxsize
        self.result_ttl_s = result_ttl_s
        self.retention = Retention.from_env(self.results_dir, result_ttl_s, uploads_dir)
        self.seed_seconds = setting_value(current_settings(), "ACESTEP_AVG_JOB_SECONDS")
        self.input_copy_bytes = max_upload_bytes()  # a job's source kept in its library record, at most
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._durations: deque[float] = deque(maxlen=AVERAGE_WINDOW)
        self._failed_durations: deque[float] = deque(maxlen=AVERAGE_WINDOW)
        self._histogram = DurationHistogram()
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
        model: str | None = None,
    ) -> Job:
        """Queue a validated job; ``cleanup`` files (uploads) are deleted when it ends; ``lm_only``
        jobs stop after the LM (``/format_input``)."""
        task_id = str(uuid.uuid4())
        inputs = list(cleanup)
        checkpoint, tag = self.checkpoint, None
        if self.slots is not None:  # UnknownModel: refused, never run on another model
            model = self.slots.require(model)
            checkpoint = self.slots.paths(model)
            tag = checkpoint.variant.tag
        if checkpoint is not None:  # before the model loads (e.g. lego on a turbo server)
            task = request.effective_task
            require_task(checkpoint, task, flow_edit_applies(task, request.flow_edit_morph))
        if self.loras is not None:
            request, _ = self.loras.admit(request, tag)  # LoraError (a ValueError): refused, nothing queued
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
                # The library record first: it keeps a copy of the inputs the next hook deletes.
                on_done=[
                    lambda job: record_job(job, self.input_copy_bytes, inputs),
                    lambda job: remove_paths(inputs),
                    self._record,
                ],
                lm_only=lm_only,
                model=model if self.slots is not None else None,
            )
            self._jobs[task_id] = job
        return job

    def submit_training(self, request: TrainingRequest, dataset: str, model: str | None = None) -> Job:
        """Queue a checked training run on ``model`` (a slot's DiT; None: the served one)."""
        task_id = str(uuid.uuid4())
        if self.slots is not None:
            model = self.slots.require(model)
        with self._lock:
            if self.dispatcher.queue_depth() >= self.maxsize:
                raise QueueFull(self.maxsize, 60)
            job = self.manager.dispatcher.submit_training(
                request, dataset, job_id=task_id, on_done=[self._record], model=model
            )
            self._jobs[task_id] = job
        return job

    def _record(self, job: Job) -> None:
        if job.started is None or job.finished is None:
            return
        seconds = job.finished - job.started
        with self._lock:
            target = self._durations if job.state == "succeeded" else self._failed_durations
            target.append(seconds)
            self._histogram.add(seconds)

    def get(self, task_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(task_id)

    def position(self, task_id: str) -> int | None:
        return self.dispatcher.position(task_id)

    def wait(self, task_id: str, timeout: float | None = None) -> Job:
        job = self.get(task_id)
        if job is None:
            raise KeyError(task_id)
        return job.wait(timeout)

    def active(self) -> list[dict]:
        """The jobs queued and running, running first then in queue order (read-only snapshots)."""
        with self._lock:
            live = [job for job in self._jobs.values() if not job.done.is_set()]
        rows = []
        for job in live:
            position = self.dispatcher.position(job.id)
            if position is None:  # ended since
                continue
            task = job.request.effective_task if job.kind == "generate" else "train"
            rows.append(
                {
                    "id": job.id,
                    "task": task,
                    "state": str(job.state),
                    "stage": job.stage,
                    "position": position,
                    "progress": job.progress,
                    "created": job.created,
                }
            )
        return sorted(rows, key=lambda row: row["position"])

    def forget(self, task_id: str) -> bool:
        """Drop an ended job's record (the library deleted its folder); a live job stays."""
        with self._lock:
            job = self._jobs.get(task_id)
            if job is None or not job.done.is_set():
                return False
            del self._jobs[task_id]
            return True

    def model_state(self) -> str:
        return self.dispatcher.runner.state

    def workers(self) -> list[dict]:
        """This server's one GPU worker, in the shape cluster workers advertise."""
        summary = worker_summary(self.manager.get_status())
        model = getattr(self.dispatcher.runner, "current", None) or self.model_name  # the DiT in use
        return [{"id": "local", "alive": True, "model": model, "gpu": summary["device"]} | summary]

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
        with self._lock:
            histogram = self._histogram.as_dict()
        depth = self.dispatcher.queue_depth()
        return {
            "backend": "local",
            "jobs": {"total": len(jobs), **counts},
            "queue_size": depth,
            "queue_by_model": {self.model_name: depth},
            "queue_maxsize": self.maxsize,
            **average_fields(done, failed, self.seed_seconds),
            "durations": histogram,
            "workers": self.workers(),
        }

    # -- retention ----------------------------------------------------------------------

    def _live_inputs(self) -> set[Path]:
        """The files that queued and running jobs read (never swept)."""
        with self._lock:
            live = [j.request for j in self._jobs.values() if not j.done.is_set() and j.kind == "generate"]
        return {path for request in live for path in input_paths(request)}

    def sweep(self, now: float | None = None) -> int:
        """Delete finished records older than the TTL, with their result files; returns how many.
        A result another job still reads (a cover of it, queued) waits for the next sweep."""
        if self.result_ttl_s <= 0:
            return 0
        now = time.time() if now is None else now
        live, root = self._live_inputs(), self.results_dir.resolve()

        def due(job: Job) -> bool:
            if not job.done.is_set() or job.finished is None or now - job.finished < self.result_ttl_s:
                return False
            return not any(path.is_relative_to(root / job.id) for path in live)

        with self._lock:
            expired = [job for job in self._jobs.values() if due(job)]
            for job in expired:
                del self._jobs[job.id]
        remove_paths(self.results_dir / job.id for job in expired)
        return len(expired)

    def sweep_files(self, now: float | None = None) -> int:
        """Retention by age of what no record remembers (see :mod:`acestep.jobs.retention`)."""
        live = self._live_inputs()  # a job queued after this has new inputs, which their age keeps
        with self._lock:
            known = set(self._jobs)
        return self.retention.sweep(known, live, now)

    def _sweep_loop(self, interval: int) -> None:
        # At start too: a previous process's files are due at once, not after the first interval.
        while True:
            try:
                removed = self.sweep()
                if removed:
                    logger.info(f"retention: removed {removed} finished jobs and their files")
                swept = self.sweep_files()
                if swept:
                    logger.info(f"retention: removed {swept} old result, upload and cache files")
            except Exception as exc:  # the sweeper must outlive a bad file
                logger.error(f"retention sweep failed: {exc}")
            if self._stop.wait(interval):
                return

    def close(self) -> None:
        self._stop.set()
        self._sweeper.join(timeout=5)
