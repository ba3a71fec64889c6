"""``Job``: one generation or training run as the faces see it, with its state as an enum.

``JobInfo`` holds what every face reads (state, stage, progress, result, error...); the embedded
queue's live ``Job`` and the cluster's stored ``JobRecord`` (``acestep/cluster/records.py``) both
extend it, so the wire format, the UI and the MCP tools serve either backend unchanged.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from acestep.request import GenerationRequest
from acestep.result import GenerationResult
from acestep.training.progress import TrainingProgress
from acestep.training.request import TrainingRequest
from acestep.worker.progress import overall


class JobState(StrEnum):
    """A job's life; the values are the wire format's (``job.state == "failed"`` still holds)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def ended(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED)


@dataclass(kw_only=True)
class JobInfo:
    id: str
    request: GenerationRequest | TrainingRequest  # a training job carries its TrainingRequest
    lm_only: bool = False  # stop after the LM (/format_input): a result with metas and no audio
    model: str | None = None  # the DiT it runs on (None: the worker's current one)
    state: JobState = JobState.QUEUED
    stage: str = "queued"
    progress: float = 0.0
    result: GenerationResult | None = None
    error: str | None = None
    error_kind: str | None = None
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    cancel_requested: bool = False
    training: TrainingProgress | None = None  # a training job's steps, loss and checkpoints
    dataset: str | None = None  # a training job's dataset (file or folder), resolved

    @property
    def kind(self) -> str:
        """``generate`` or ``train``."""
        return "train" if isinstance(self.request, TrainingRequest) else "generate"

    def advance(self, stage: str, fraction: float) -> None:
        """A progress report of the running job: ``progress`` is the overall fraction, which never
        goes down (acestep/worker/progress.py); ``stage`` names where it is."""
        self.stage, self.progress = stage, overall(stage, fraction, self.progress)

    def fail(self, message: str, kind: str) -> None:
        self.state, self.stage, self.error, self.error_kind = JobState.FAILED, "failed", message, kind


@dataclass(kw_only=True)
class Job(JobInfo):
    """A job of this process's dispatcher: live, with its completion event and hooks."""

    output_dir: str
    keep_alive: float
    created: float = field(default_factory=time.time)
    done: threading.Event = field(default_factory=threading.Event)
    # Called once the job has ended (its files written or its failure recorded); e.g. upload cleanup.
    on_done: list[Callable[[Job], None]] = field(default_factory=list)
    # Called with (stage, fraction) at each progress report of the running job (the CLI's bar).
    on_progress: list[Callable[[str, float], None]] = field(default_factory=list)

    def wait(self, timeout: float | None = None) -> Job:
        if not self.done.wait(timeout):
            raise TimeoutError(f"job {self.id} still {self.state} after {timeout} s")
        return self


__all__ = ["Job", "JobInfo", "JobState"]
