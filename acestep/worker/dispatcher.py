"""The dispatcher: one thread that feeds the runner jobs in FIFO order and applies keep-alive.

Admission and idleness share one lock: ``submit`` appends under it, and the loop decides "idle,
unload now" under it only when nothing is queued. An unload that wins the race simply runs before
the new job, which then reloads; no job is ever dropped. Explicit load and unload commands run
between jobs (after the running one), never during one. A caller waiting for one may set a
``WaitScope``: its wait then ends at the scope's deadline, or when the caller goes away, and a
command that has not started by then is withdrawn.
"""

from __future__ import annotations

import itertools
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from acestep.errors import JobError
from acestep.memory.keep_alive import NEVER, IdleTimer, KeepAlivePolicy
from acestep.memory.report import MemoryReport
from acestep.request import GenerationRequest
from acestep.settings import training_dir
from acestep.training.places import clear_stop, request_stop
from acestep.training.progress import TrainingProgress
from acestep.training.request import TrainingRequest
from acestep.worker.commands import WAIT_SCOPE, BusyError, CommandTimeout, GuardError, WaitScope
from acestep.worker.job import Job, JobState
from acestep.worker.runner import Runner

POLL_S = 0.5  # longest sleep between keep-alive checks (the clock may be a test's fake clock)


@dataclass
class _Command:
    action: str  # load | park | free | lora_load | lora_unload
    future: Future
    idle: bool = False
    names: list[str] | None = None  # the adapters of a lora_load / lora_unload (None: all); a load's DiT


class Dispatcher:
    def __init__(
        self,
        runner: Runner,
        policy: KeepAlivePolicy,
        clock: Callable[[], float] = time.monotonic,
        refuse_unload_when_busy: bool = False,
        on_report: Callable[[MemoryReport, str], None] | None = None,
    ):
        self.runner = runner
        self.policy = policy
        self.timer = IdleTimer(clock)
        self.refuse_unload_when_busy = refuse_unload_when_busy
        self.on_report = on_report or (lambda report, reason: None)
        # Wraps each job's GPU work (e.g. holding tokens of a shared GPU queue); None = nothing.
        self.job_guard: Callable[[Job], AbstractContextManager] | None = None
        self._cond = threading.Condition()
        self._jobs: deque[Job] = deque()
        self._commands: deque[_Command] = deque()
        self._running: Job | None = None
        self._ids = itertools.count(1)
        self._stopping = False
        self.unloads: list[tuple[str, str]] = []  # (level, reason) of every unload, in order
        self._thread = threading.Thread(target=self._loop, name="acestep-dispatcher", daemon=True)
        self._thread.start()

    # -- admission -----------------------------------------------------------------------

    def submit(
        self,
        request: GenerationRequest,
        output_dir: str | Path,
        keep_alive: float | None = None,
        job_id: str | None = None,
        on_done: list[Callable[[Job], None]] | None = None,
        lm_only: bool = False,
        on_progress: list[Callable[[str, float], None]] | None = None,
        model: str | None = None,
    ) -> Job:
        """Queue a job; ``keep_alive`` (seconds) defaults to the request's own, then the server's;
        ``model`` names the DiT it runs on (the runner loads it on demand)."""
        if keep_alive is None:
            keep_alive = self.policy.for_request(request.keep_alive)
        with self._cond:
            if self._stopping:
                raise RuntimeError("the dispatcher is shutting down")
            ident = job_id or f"job-{next(self._ids)}"
            job = Job(
                id=ident,
                request=request,
                output_dir=str(output_dir),
                keep_alive=keep_alive,
                lm_only=lm_only,
                model=model,
            )
            job.on_done.extend(on_done or [])
            job.on_progress.extend(on_progress or [])
            self._jobs.append(job)
            self._cond.notify_all()
        return job

    def submit_training(
        self,
        request: TrainingRequest,
        dataset: str,
        job_id: str | None = None,
        on_done: list[Callable[[Job], None]] | None = None,
        model: str | None = None,
    ) -> Job:
        """Queue a training run: it holds the GPU alone while it runs (the jobs behind it wait).
        ``request.output_name`` names its run (the job service fills it in)."""
        if not request.output_name:
            raise ValueError("a queued training run needs its output_name")
        clear_stop(request, training_dir())
        with self._cond:
            if self._stopping:
                raise RuntimeError("the dispatcher is shutting down")
            job = Job(
                id=job_id or f"job-{next(self._ids)}",
                request=request,
                output_dir="",
                keep_alive=self.policy.for_request(None),
                model=model,
                dataset=dataset,
                training=TrainingProgress(),
            )
            job.on_done.extend(on_done or [])
            self._jobs.append(job)
            self._cond.notify_all()
        return job

    def _command(self, action: str, names: list[str] | None = None) -> Future:
        future: Future = Future()
        with self._cond:
            if self._stopping:
                raise RuntimeError("the dispatcher is shutting down")
            if action in ("park", "free") and self.refuse_unload_when_busy and self._running is not None:
                raise BusyError(
                    f"a job ({self._running.id}) is running; unload refused "
                    "(ACESTEP_UNLOAD_WHEN_BUSY=refuse). Retry when it has finished."
                )
            self._commands.append(_Command(action, future, names=names))
            self._cond.notify_all()
        return future

    def unload(self, level: str = "free", timeout: float | None = None) -> MemoryReport:
        """Unload after the running job (if any); returns the measured report."""
        if level not in ("park", "free"):
            raise ValueError(f"unload level must be park or free, got {level!r}")
        return self._await(self._command(level), "unload", timeout)

    def load(self, timeout: float | None = None, model: str | None = None) -> MemoryReport:
        """Load (or wake) ``model``, default the DiT in use, after the running job."""
        return self._await(self._command("load", [model] if model else None), "load", timeout)

    def load_lora(self, names: list[str], timeout: float | None = None) -> MemoryReport:
        """Load LoRA adapters into the DiT after the running job (they stay inactive until a job
        names them)."""
        return self._await(self._command("lora_load", list(names)), "LoRA load", timeout)

    def unload_lora(self, names: list[str] | None = None, timeout: float | None = None) -> MemoryReport:
        """Remove LoRA adapters (all by default) after the running job."""
        return self._await(self._command("lora_unload", names), "LoRA unload", timeout)

    def _await(self, future: Future, what: str, timeout: float | None) -> MemoryReport:
        """The command's report, waiting at most ``timeout`` s and no longer than the caller's
        ``WaitScope``; past that, a command that has not started is withdrawn (``CommandTimeout``)."""
        scope = WAIT_SCOPE.get()
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        if scope is not None:
            deadline = scope.deadline if deadline is None else min(deadline, scope.deadline)
        left = None if deadline is None else max(0.0, deadline - started)
        wait([future] if scope is None else [future, scope.gone], timeout=left, return_when=FIRST_COMPLETED)
        if future.done():
            return future.result()
        withdrawn = future.cancel()  # False once the worker has begun it: it then completes
        with self._cond:
            running = self._running.id if self._running is not None else None
        waited = time.monotonic() - started
        because = f"the running job ({running}) has not finished" if running else "the worker is busy"
        outcome = "it was withdrawn; nothing changed" if withdrawn else "it has started and will complete"
        raise CommandTimeout(f"the {what} waited {waited:.0f} s: {because}; {outcome}. Retry later.")

    def request_load(self) -> Future:
        """Queue a load without waiting for it (warm-up at start)."""
        return self._command("load")

    def wake(self) -> None:
        """Re-check keep-alive now (after a test moves its fake clock)."""
        with self._cond:
            self._cond.notify_all()

    # -- state -----------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        with self._cond:
            return self._running is not None or bool(self._jobs) or bool(self._commands)

    def queue_depth(self) -> int:
        with self._cond:
            return len(self._jobs)

    def position(self, job_id: str) -> int | None:
        """1-based place in the queue (0 = running, None = not queued or running)."""
        with self._cond:
            if self._running is not None and self._running.id == job_id:
                return 0
            for index, job in enumerate(self._jobs, start=1):
                if job.id == job_id:
                    return index
            return None

    def cancel(self, job_id: str) -> str:
        """``cancelled`` (was queued), ``cancelling`` (running: stops at its next progress report),
        or ``unknown`` (not queued or running)."""
        with self._cond:
            for job in self._jobs:
                if job.id == job_id:
                    self._jobs.remove(job)
                    break
            else:
                if self._running is not None and self._running.id == job_id:
                    self._running.cancel_requested = True
                    if self._running.kind == "train":  # it stops after its update, checkpointed
                        request_stop(self._running.request, training_dir())
                    return "cancelling"
                return "unknown"
        job.fail("cancelled by request", "cancelled")
        self._finish(job)
        return "cancelled"

    def status(self) -> dict:
        with self._cond:
            left = self.timer.seconds_left()
            return {
                "running": self._running.id if self._running else None,
                "queued": len(self._jobs),
                "unload_in_s": None if left is None else round(left, 3),
                "unloads": len(self.unloads),
            }

    # -- the loop ------------------------------------------------------------------------------

    def _next(self) -> Job | _Command | None:
        """Under the lock: a command, a job, an idle unload, or None when stopping."""
        while True:
            if self._commands:
                return self._commands.popleft()
            if self._jobs:
                job = self._jobs.popleft()
                self._running = job
                self.timer.job_started()
                return job
            if self._stopping:
                return None
            if self.timer.due():
                self.timer.disarm()
                if self._idle_unload_useful():
                    return _Command(self.policy.idle_level, Future(), idle=True)
                continue
            left = self.timer.seconds_left()
            self._cond.wait(POLL_S if left is None else min(max(left, 0.001), POLL_S))

    def _idle_unload_useful(self) -> bool:
        state = self.runner.state
        if self.policy.idle_level == "park":
            return state == "ready"
        # A live worker process with nothing loaded still holds a process (and maybe a context).
        return state != "unloaded" or self.runner.alive

    def _loop(self) -> None:
        while True:
            with self._cond:
                item = self._next()
            if item is None:
                return
            if isinstance(item, Job):
                self._run(item)
            else:
                self._control(item)

    def _control(self, command: _Command) -> None:
        if not command.future.set_running_or_notify_cancel():
            return  # withdrawn by its caller before it began
        reason = "keep-alive expired" if command.idle else "requested"
        try:
            if command.action == "load":
                report = self.runner.load(*(command.names or []))
            elif command.action == "lora_load":
                report = self.runner.load_lora(command.names or [])
            elif command.action == "lora_unload":
                report = self.runner.unload_lora(command.names)
            else:
                report = self.runner.unload(command.action)
                with self._cond:
                    self.unloads.append((command.action, reason))
            self._report(report, reason)
            command.future.set_result(report)
        except Exception as exc:
            logger.error(f"{command.action} failed: {exc}")
            command.future.set_exception(exc)

    def _run(self, job: Job) -> None:
        job.advance("starting", 0.0)
        job.state, job.started = JobState.RUNNING, time.time()

        def progress(stage: str, fraction: float) -> None:
            if job.cancel_requested:
                raise JobError("cancelled", "cancelled by request")
            job.advance(stage, fraction)  # one overall fraction, never lower (worker/progress.py)
            for listener in job.on_progress:  # the stage's own fraction (the CLI counts steps)
                listener(stage, float(fraction))

        try:
            with self.job_guard(job) if self.job_guard else nullcontext():
                if job.cancel_requested:  # cancelled while the guard waited (e.g. for GPU tokens)
                    raise JobError("cancelled", "cancelled by request")
                if job.kind == "train":
                    self._train(job)
                else:
                    job.result = self.runner.generate(
                        job.request, job.output_dir, progress, lm_only=job.lm_only, model=job.model
                    )
            job.state, job.progress, job.stage = JobState.SUCCEEDED, 1.0, "done"
            load = self.runner.take_job_load()
            if load is not None:
                self._report(load, f"needed by {job.id}")
        except JobError as exc:
            job.fail(str(exc), exc.kind)
            if exc.kind == "crash":
                self._replace_worker()
        except GuardError as exc:  # e.g. the shared GPU queue is down or timed out
            job.fail(str(exc), "gpu_queue")
        except Exception as exc:  # a bug, not the user's input: keep the worker loop alive
            traceback.print_exception(exc)
            job.fail(f"internal error: {exc}", "internal")
        with self._cond:
            self._running = None
            if not self._jobs:
                self.timer.job_finished(job.keep_alive)
            self._cond.notify_all()
        self._finish(job)

    def _train(self, job: Job) -> None:
        """A training run: its reports replace the job's training progress; a stop request is a
        file the trainer reads after each update (it keeps its last checkpoint), never an error."""

        def report(progress: TrainingProgress) -> None:
            job.training = progress
            job.advance(progress.stage, progress.fraction)

        job.training = TrainingProgress.from_dict(
            self.runner.train(job.request, job.dataset or "", report, model=job.model)
        )

    def _finish(self, job: Job) -> None:
        job.finished = time.time()
        # Hooks (e.g. deleting the uploads) run before waiters are woken, so they see them done.
        for callback in job.on_done:
            try:
                callback(job)
            except Exception as exc:  # cleanup hooks must not break the loop
                logger.error(f"job {job.id} completion hook failed: {exc}")
        job.done.set()

    def _report(self, report: MemoryReport, reason: str) -> None:
        try:
            self.on_report(report, reason)
        except Exception as exc:  # a reporting bug must not fail a job or an unload
            logger.error(f"memory report hook failed: {exc}")

    def _replace_worker(self) -> None:
        try:
            self.runner.restart()
        except Exception as exc:  # the next job will try again
            logger.error(f"could not restart the GPU worker: {exc}")

    def stop(self, unload: bool = True) -> None:
        """Let the running job finish, fail the queued ones ("shutting down"), stop the loop and
        free the runner. A server stopping must not run hundreds of queued jobs first."""
        with self._cond:
            self._stopping = True
            queued, self._jobs = list(self._jobs), deque()
            self._cond.notify_all()
        for job in queued:
            job.fail("the server is shutting down; submit the job again", "cancelled")
            self._finish(job)
        self._thread.join()
        with self._cond:
            leftovers, self._commands = list(self._commands), deque()
        for command in leftovers:
            if command.future.set_running_or_notify_cancel():  # a withdrawn one has nobody to tell
                command.future.set_exception(RuntimeError("the dispatcher shut down first"))
        if unload:
            self.runner.unload("free")


__all__ = ["NEVER", "WAIT_SCOPE", "BusyError", "CommandTimeout", "Dispatcher", "Job", "JobState", "WaitScope"]
