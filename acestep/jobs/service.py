"""``JobService``: the one front door the faces (REST, the UI, MCP) queue work through.

Built once per process (serving/app.py's lifespan, or the stdio MCP entry in cli/mcp.py) from the
parts that process runs: the job queue (embedded, or the cluster's Redis queue, passed in), the
memory control (the ``MemoryManager``, or a cluster's control), the LoRA selection and whether an
LM is here. ``submit`` checks a request and queues it or raises one :class:`Refusal`; ``watch`` and
``await_job`` follow a job to its end. A face only turns a ``Refusal`` into its own shape (an HTTP
status from ``acestep.jobs.failures``, a Gradio error, an MCP tool error), with the same reason.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from loguru import logger

from acestep.checkpoints.layout import CheckpointError
from acestep.checkpoints.slots import UnknownModel
from acestep.errors import JobErrorKind
from acestep.jobs.failures import Refusal, RefusalCause, failure_reason, lm_missing_reason
from acestep.jobs.queue import JobQueue, QueueFull, QueueUnavailable
from acestep.jobs.training import PreparedRun, prepare_run
from acestep.jobs.waits import CallerGone
from acestep.lora.selection import LoraSelection
from acestep.memory.limits import MemoryLimitError
from acestep.request import GenerationRequest
from acestep.settings import training_dir
from acestep.training.request import TrainingRequest
from acestep.worker.job import Job, JobState

POLL_S = 0.05


def discard(paths: Iterable[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


@dataclass
class JobService:
    queue: JobQueue
    control: Any  # MemoryManager, or the cluster's ClusterControl: get_status, load, unload
    loras: LoraSelection | None = None
    lm_name: str | None = None
    lm_missing: str = ""  # why there is no LM (the fix included), when lm_name is None
    training_ids: list[str] = field(default_factory=list)  # training runs queued here, oldest first

    def require_lm(
        self, request: GenerationRequest, features: list[str] | None = None, lm_only: bool = False
    ) -> None:
        """Refuse, before anything is queued, a request that needs the LM on a server without one."""
        if self.lm_name is None and (lm_only or request.uses_lm):
            names = features if features is not None else request.lm_switches
            raise Refusal(RefusalCause.LM_MISSING, lm_missing_reason(names, self.lm_missing, lm_only))

    async def submit(
        self,
        request: GenerationRequest,
        cleanup: Iterable[Path] = (),
        lm_only: bool = False,
        model: str | None = None,
        features: list[str] | None = None,
    ) -> Job:
        """Queue ``request``: the LM check, then the queue's checks against the model (task support,
        LoRA admission, memory limits, keep-alive). Refused: :class:`Refusal`, and the ``cleanup``
        files (uploads) are deleted; queued, the job deletes them when it ends."""
        cleanup = list(cleanup)
        try:
            self.require_lm(request, features, lm_only)
            # In a thread: a cluster's queue is Redis, which must not stall the event loop.
            return await anyio.to_thread.run_sync(
                lambda: self.queue.submit(request, cleanup=cleanup, lm_only=lm_only, model=model)
            )
        except QueueFull as exc:
            discard(cleanup)
            raise Refusal(RefusalCause.QUEUE_FULL, str(exc), exc.retry_after) from None
        except QueueUnavailable as exc:
            discard(cleanup)
            raise Refusal(RefusalCause.UNAVAILABLE, str(exc), exc.retry_after) from None
        except MemoryLimitError as exc:
            discard(cleanup)
            raise Refusal(JobErrorKind.LIMIT, str(exc)) from None
        except UnknownModel as exc:  # never a silent fallback to another model (patches/0038)
            discard(cleanup)
            raise Refusal(RefusalCause.UNKNOWN_MODEL, str(exc)) from None
        except CheckpointError as exc:  # its folder went incomplete since it was listed
            discard(cleanup)
            logger.warning(f"model {model!r} cannot be served: {exc}")
            reason = f"model {model!r} is not available now: its folder is incomplete (see the server log)"
            raise Refusal(RefusalCause.UNKNOWN_MODEL, reason) from None
        except ValueError as exc:  # a wrong request: keep-alive, LoRA, a task the model cannot run
            discard(cleanup)
            raise Refusal(JobErrorKind.INPUT, str(exc)) from None
        except BaseException:  # anything else, a caller gone included: nothing stays behind
            discard(cleanup)
            raise

    # -- training runs ------------------------------------------------------------------------

    async def submit_training(
        self, request: TrainingRequest, confined: bool = True, model: str | None = None
    ) -> tuple[Job, PreparedRun]:
        """Check a training run (``acestep/jobs/training.py``) and queue it; ``confined``: its
        dataset must lie in the training folder (every face that takes paths from the network).
        One run at a time: another while one is queued or running is refused (409)."""
        running = self.training_job()
        if running is not None and not JobState(running.state).ended:
            raise Refusal(
                RefusalCause.CONFLICT,
                f"a training run is already {running.state} (task {running.id}); stop it first",
            )
        model = model or request.model
        try:
            prepared = await anyio.to_thread.run_sync(lambda: self._prepare(request, confined, model))
            job = await anyio.to_thread.run_sync(
                lambda: self.queue.submit_training(prepared.request, prepared.dataset, model)
            )
        except QueueFull as exc:
            raise Refusal(RefusalCause.QUEUE_FULL, str(exc), exc.retry_after) from None
        except UnknownModel as exc:
            raise Refusal(RefusalCause.UNKNOWN_MODEL, str(exc)) from None
        except ValueError as exc:  # the dataset, the run's name, the GPU's size: the reason says
            raise Refusal(JobErrorKind.INPUT, str(exc)) from None
        self.training_ids.append(job.id)
        return job, prepared

    def _prepare(self, request: TrainingRequest, confined: bool, model: str | None) -> PreparedRun:
        slots = getattr(self.queue, "slots", None)
        checkpoint = (
            slots.paths(slots.require(model))
            if slots is not None
            else getattr(self.queue, "checkpoint", None)
        )
        manager = getattr(self.control, "manager", self.control)
        limits = getattr(manager, "limits", None)
        gpu_gib = limits.gib if limits is not None else None
        return prepare_run(request, training_dir(), confined, checkpoint, gpu_gib)

    def training_job(self, job_id: str | None = None) -> Job | None:
        """A training run by id (None: the latest one queued here)."""
        if job_id is None:
            ids = [i for i in self.training_ids if self.queue.get(i) is not None]
            if not ids:
                return None
            job_id = ids[-1]
        job = self.queue.get(job_id)
        return job if job is not None and getattr(job, "kind", "generate") == "train" else None

    async def stop_training(self, job_id: str | None = None) -> str:
        """Stop a run: ``cancelled`` (it was queued), ``stopping`` (it stops after its update and
        keeps its last checkpoint), ``finished``, or ``none`` (no run)."""
        job = self.training_job(job_id)
        if job is None:
            return "none"
        outcome = await anyio.to_thread.run_sync(self.queue.cancel, job.id)
        return "stopping" if outcome == "cancelling" else outcome

    async def watch(
        self,
        job: Job,
        timeout_s: float | None = None,
        gone: Callable[[], Any] | None = None,
        cancel: bool = True,
    ) -> AsyncIterator[Job]:
        """Each snapshot of ``job`` until it ends (the last one is the ended job), a short thread
        call at a time. Past ``timeout_s`` (a 504 ``Refusal``), when ``await gone()`` says the caller
        left (``CallerGone``), or when the watcher is cancelled, the job is cancelled: nobody would
        read its result. ``cancel=False``: an onlooker's watch (the job's result stays readable by
        /query_result), which ends without touching the job."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            while True:
                job = await anyio.to_thread.run_sync(self.queue.get, job.id) or job
                yield job
                if JobState(job.state).ended:
                    return
                if gone is not None and await gone():
                    raise CallerGone(f"the caller left; task {job.id} was cancelled")
                if deadline is not None and time.monotonic() > deadline:
                    raise Refusal(
                        RefusalCause.TIMEOUT,
                        f"the job did not finish in {timeout_s:.0f} s (task {job.id}); it was cancelled",
                    )
                await anyio.sleep(POLL_S)
        except BaseException:
            if cancel:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self.queue.cancel, job.id)
            raise

    async def await_job(
        self, job: Job, timeout_s: float | None = None, gone: Callable[[], Any] | None = None
    ) -> Job:
        """The ended job when it succeeded; a :class:`Refusal` with its failure's kind otherwise."""
        last = job
        async for last in self.watch(job, timeout_s, gone):  # noqa: B007 (the last one is kept)
            pass
        return self.outcome(last)

    @staticmethod
    def outcome(job: Job) -> Job:
        if job.state != JobState.SUCCEEDED:
            raise Refusal(job.error_kind or JobErrorKind.INTERNAL, failure_reason(job))
        return job
