"""What a cluster worker runs a job on: its own manager and supervisor (the real engine), or a no-op.

``ManagerExecutor`` is the worker's GPU: a ``MemoryManager``'s decisions and a ``Supervisor``'s
dispatcher, keep-alive and worker process, exactly as in a single server; it only adds progress
reporting and cancellation across Redis. A training record runs through the same dispatcher
(``submit_training``); its outcome is its final ``TrainingProgress``, and a cancel stops it after
its update with a checkpoint, as on a single server. ``NoopExecutor`` writes a short silent file at
once: it measures the queue itself (``bench/bench_queue.py``) and lets tests run many workers
cheaply; it cannot train.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Protocol

from acestep.cluster.records import JobRecord
from acestep.memory.manager import MemoryManager, worker_summary
from acestep.result import AudioItem, GenerationResult
from acestep.settings import training_dir
from acestep.training import checkpoint_files
from acestep.training.places import run_dir
from acestep.training.progress import TrainingProgress
from acestep.training.request import TrainingRequest
from acestep.worker.job import Job, JobState
from acestep.worker.runner import EngineSpec
from acestep.worker.supervisor import Supervisor

PROGRESS_S = 0.5


class Report(Protocol):
    """Stores a progress report (a training run's ``TrainingProgress`` with it); answers True when
    the job should stop (a cancel was asked)."""

    def __call__(self, stage: str, fraction: float, training: TrainingProgress | None = None) -> bool: ...


class JobFailed(RuntimeError):
    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


class Executor(Protocol):
    model: str
    variant: str
    tasks: list[str]

    def run(
        self, record: JobRecord, output_dir: Path, report: Report
    ) -> GenerationResult | TrainingProgress: ...
    def cancel(self) -> None: ...
    def status(self) -> dict: ...
    def unload(self, level: str) -> dict: ...
    def load(self) -> dict: ...
    def load_lora(self, names: list[str]) -> dict: ...
    def unload_lora(self, names: list[str] | None) -> dict: ...
    def close(self) -> None: ...


class ManagerExecutor:
    """The worker's GPU: ``manager`` decides, and this executor's ``Supervisor`` runs the jobs."""

    def __init__(
        self,
        manager: MemoryManager,
        spec: EngineSpec,
        model: str,
        variant: str,
        tasks: list[str],
        preload: bool = True,
    ):
        self.supervisor = Supervisor(manager)
        self.model, self.variant, self.tasks = model, variant, sorted(tasks)
        dispatcher = self.supervisor.start(spec)
        if preload:  # warm before the first job; keep-alive may unload it again later
            dispatcher.request_load()
        self._job: Job | None = None

    def run(self, record: JobRecord, output_dir: Path, report: Report) -> GenerationResult | TrainingProgress:
        from acestep.memory.keep_alive import KeepAliveError
        from acestep.memory.limits import MemoryLimitError

        try:
            if record.kind == "train":
                job = self._submit_training(record)
            else:
                job = self.supervisor.submit(
                    record.request,
                    output_dir,
                    uses_lm=record.uses_lm,
                    job_id=record.id,
                    lm_only=record.lm_only,
                )
        except MemoryLimitError as exc:  # this worker's GPU is smaller than the server assumed
            raise JobFailed(str(exc), "limit") from None
        except (KeepAliveError, ValueError) as exc:
            raise JobFailed(str(exc), "input") from None
        self._job = job
        stopping = False
        try:
            while not job.done.wait(PROGRESS_S):
                if report(job.stage, job.progress, job.training) and not stopping:
                    stopping = True  # asked once: a training run's STOP file stays until it is honoured
                    self._cancel(job)
        finally:
            self._job = None
        if job.kind == "train":  # its last progress, the failed one's included
            report(job.stage, job.progress, job.training)
        if job.state != JobState.SUCCEEDED:
            raise JobFailed(job.error or "failed", job.error_kind or "internal")
        return job.training if job.kind == "train" else job.result

    def _submit_training(self, record: JobRecord) -> Job:
        """On this worker's own DiT. A run started again after its worker stopped goes on from its
        last checkpoint (the shared training folder holds it) instead of refusing to overwrite it."""
        request = record.request
        assert isinstance(request, TrainingRequest)
        restarted = record.attempts > 1 and not request.resume and not request.preprocess_only
        if restarted and checkpoint_files.steps(run_dir(training_dir(), request.output_name or "")):
            request = request.model_copy(update={"resume": True})
        dispatcher = self.supervisor.dispatcher
        if dispatcher is None:
            raise JobFailed("this worker's engine is not running", "internal")
        return dispatcher.submit_training(request, record.dataset or "", job_id=record.id)

    def _cancel(self, job: Job) -> None:
        dispatcher = self.supervisor.dispatcher
        if dispatcher is not None:
            dispatcher.cancel(job.id)

    def cancel(self) -> None:
        job = self._job
        if job is not None:
            self._cancel(job)

    def status(self) -> dict:
        summary = worker_summary(self.supervisor.get_status())
        summary.pop("running")  # the cluster worker reports its own job
        return summary

    def unload(self, level: str) -> dict:
        return self.supervisor.unload(level)

    def load(self) -> dict:
        return self.supervisor.load()

    def load_lora(self, names: list[str]) -> dict:
        return self.supervisor.load_lora(names)

    def unload_lora(self, names: list[str] | None) -> dict:
        return self.supervisor.unload_lora(names)

    def close(self) -> None:
        self.supervisor.close()


class NoopExecutor:
    """No model: every job succeeds at once with a 0.1 s silent WAV (``ACESTEP_NOOP_SECONDS``
    of sleep first, to hold a job in flight in tests)."""

    def __init__(self, model: str = "noop", tasks: list[str] | None = None, seconds: float = 0.0):
        from acestep.tasks import TASK_TYPES

        self.model, self.variant = model, "noop"
        self.tasks = sorted(tasks or TASK_TYPES)
        self.seconds = seconds
        self._cancel = threading.Event()
        self._state = "ready"

    def run(self, record: JobRecord, output_dir: Path, report: Report) -> GenerationResult:
        if record.kind == "train":
            raise JobFailed(f"worker {self.model!r} has no model (--engine noop): it cannot train", "input")
        import numpy as np
        import soundfile as sf

        self._cancel.clear()
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline:
            if report("noop", 0.5) or self._cancel.wait(
                min(PROGRESS_S, max(0.0, deadline - time.monotonic()))
            ):
                raise JobFailed("cancelled by request", "cancelled")
        items = []
        if not record.lm_only:  # an LM-only job (/format_input) has metas and no audio
            output_dir.mkdir(parents=True, exist_ok=True)
            path = output_dir / "noop_0.wav"
            sf.write(path, np.zeros((4800, 2), dtype=np.float32), 48000)
            items.append(AudioItem(path=str(path), seed=0, sample_rate=48000, duration=0.1, peak=0.0))
        task = record.request.effective_task
        return GenerationResult(
            items=items,
            sample_rate=48000,
            task_type=task,
            model=self.model,
            variant="noop",
            metas={"caption": record.request.caption} if record.lm_only else {},
            timings={"total": self.seconds},
        )

    def cancel(self) -> None:
        self._cancel.set()

    def status(self) -> dict:
        return {
            "state": self._state,
            "device": "none",
            "vram_used_bytes": 0,
            "vram_total_bytes": 0,
            "residency": {},
        }

    def unload(self, level: str) -> dict:
        self._state = "parked" if level == "park" else "unloaded"
        return {"action": level, "seconds": 0.0}

    def load(self) -> dict:
        self._state = "ready"
        return {"action": "load", "seconds": 0.0}

    def load_lora(self, names: list[str]) -> dict:
        return {"action": "lora_load", "note": "no model: nothing loaded", "seconds": 0.0}

    def unload_lora(self, names: list[str] | None) -> dict:
        return {"action": "lora_unload", "note": "no model: nothing loaded", "seconds": 0.0}

    def close(self) -> None:
        return None
