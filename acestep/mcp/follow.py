"""Following a job from MCP: waiting with progress notifications that keep a client alive, or
returning at once for a client that polls (``job_status``) and may cancel (``cancel_job``).

Every task tool queues through :func:`run`. With ``wait`` (the default) the call lasts as long as
the job and sends a progress notification at each rise of the overall fraction and, while nothing
moves (queued, loading, decoding), at least every ``HEARTBEAT_S``; a client whose request timeout
restarts on progress (the MCP spec's advice) thus never gives up on a long job. Without ``wait``
the job is only queued: it runs to its end whatever the client does, and its result stays readable
for ``ACESTEP_RESULT_TTL``.
"""

from __future__ import annotations

import json
import time

import anyio
from mcp.server.fastmcp import Context, FastMCP
from mcp.server.fastmcp.exceptions import ToolError
from mcp.types import TextContent

from acestep.jobs.failures import Refusal, failure_reason
from acestep.jobs.queue import JobQueue
from acestep.jobs.service import JobService
from acestep.mcp.delivery import Delivery, embed_budget
from acestep.mcp.inputs import Backend
from acestep.request import GenerationRequest
from acestep.settings import current as current_settings
from acestep.settings import value as setting_value
from acestep.worker.job import JobInfo, JobState

HEARTBEAT_S = 5.0  # the longest a waiting call goes without a notification
# MCP requires each notification's progress to be above the last one. A heartbeat with no real
# rise adds this share of the distance left to 1.0: it stays below 1.0 however many are sent, and
# the drift stays negligible (about 1.7 % of the distance after a day of heartbeats), so a later
# real value is sent as it is; were it at or below what was sent, the nudged value goes instead.
NUDGE = 1e-6
TIMEOUT_ENV = "ACESTEP_GENERATION_TIMEOUT"  # a waiting call cancels its job past it, as /lego does


class ProgressNotes:
    """The progress notifications of one waiting call (none when the client gave no token)."""

    def __init__(self, ctx: Context | None, queue: JobQueue):
        self.ctx, self.queue = ctx, queue
        self.sent = -1.0  # nothing sent yet; the first note carries the job's own fraction
        self.stage: str | None = None
        self.at = 0.0

    async def update(self, job: JobInfo) -> None:
        """Send a note when the fraction rose, the stage changed, or the heartbeat is due."""
        if self.ctx is None:
            return
        now = time.monotonic()
        if job.progress <= self.sent and job.stage == self.stage and now - self.at < HEARTBEAT_S:
            return
        value = max(job.progress, self.sent + (1.0 - self.sent) * NUDGE)
        if value <= self.sent:  # 1.0 was sent: nothing can rise past it
            return
        message = await status_message(self.queue, job)
        await self.ctx.report_progress(value, 1.0, message=message)
        self.sent, self.stage, self.at = value, job.stage, now


async def queue_position(queue: JobQueue, job: JobInfo) -> int | None:
    """The job's 1-based place in the queue (0: running; None: ended). In a thread: a cluster's
    queue is Redis."""
    if JobState(job.state).ended:
        return None
    return await anyio.to_thread.run_sync(queue.position, job.id)


async def status_message(queue: JobQueue, job: JobInfo) -> str:
    """The stage, and while queued the job's place in the queue."""
    if job.state != JobState.QUEUED:
        return job.stage
    position = await queue_position(queue, job)
    return "queued" if position is None else f"queued: position {position}"


async def snapshot(queue: JobQueue, job: JobInfo) -> dict:
    """A job's state as ``job_status`` and a call that does not wait report it."""
    status = {
        "task_id": job.id,
        "status": str(job.state),
        "stage": job.stage,
        "progress": job.progress,
        "queue_position": await queue_position(queue, job),
    }
    if job.state == JobState.FAILED:
        status |= {"error": failure_reason(job), "error_kind": job.error_kind}
    return status


def as_content(values: dict) -> list:
    return [TextContent(type="text", text=json.dumps(values))]


async def run(
    backend: Backend, request: GenerationRequest, cleanup: list, delivery: Delivery, wait: bool = True
) -> list:
    """Queue through the service; with ``wait``, follow the job to its result (a refusal or a
    failure is a tool error with the reason REST and the UI give, acestep/jobs/failures.py), else
    return its task id and place at once. Refused, the uploads are deleted."""
    service: JobService = backend.service
    try:
        job = await service.submit(request, cleanup)
        if not wait:  # no watch: a watcher cancels its job when it stops, and nobody waits here
            return as_content(await snapshot(service.queue, job))
        notes = ProgressNotes(delivery.ctx, service.queue)
        timeout_s = setting_value(current_settings(), TIMEOUT_ENV)
        last = job
        async for last in service.watch(job, timeout_s):  # the last one is the ended job
            await notes.update(last)
        job = service.outcome(last)
    except Refusal as exc:
        raise ToolError(exc.reason) from None
    return await delivery.result(job)


async def _generation_job(service: JobService, task_id: str) -> JobInfo:
    job = await anyio.to_thread.run_sync(service.queue.get, task_id)
    if job is None:
        raise ToolError(f"no job {task_id!r} on this server (finished jobs are kept for ACESTEP_RESULT_TTL)")
    if job.kind != "generate":
        raise ToolError(f"task {task_id!r} is a training run: see training_status and stop_training")
    return job


def add_job_tools(server: FastMCP, backend: Backend) -> None:
    """``job_status`` and ``cancel_job``: polling and stopping a job queued with ``wait`` false."""

    @server.tool()
    async def job_status(task_id: str, ctx: Context | None = None) -> list:
        """A job's state: ``status`` (queued, running, succeeded, failed), ``stage``, ``progress``
        (0..1) and ``queue_position`` (0: running). Once it succeeded, the same result as a tool
        that waits (summary, then each file's audio or link); a failed job names its ``error``."""
        job = await _generation_job(backend.service, task_id)
        if job.state == JobState.SUCCEEDED:
            return await Delivery(embed_budget(), ctx).result(job)
        return as_content(await snapshot(backend.service.queue, job))

    @server.tool()
    async def cancel_job(task_id: str) -> dict:
        """Cancel a job: ``outcome`` is ``cancelled`` (it was queued), ``cancelling`` (it runs:
        it stops at its next step and fails as cancelled) or ``finished`` (it had ended)."""
        await _generation_job(backend.service, task_id)
        outcome = await anyio.to_thread.run_sync(backend.service.queue.cancel, task_id)
        return {"task_id": task_id, "outcome": outcome}
