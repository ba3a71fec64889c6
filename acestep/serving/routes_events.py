"""GET /v1/jobs/{task_id}/events: a job's progress as server-sent events, then its result.

The events come from ``JobService.watch``, the same snapshots /query_result reads (``queue.get``):
``progress`` each time the status, progress, stage or queue position changes, a ``: keep-alive``
comment when nothing changed for ``KEEP_ALIVE_S``, then one ``result`` (the job succeeded) or
``error`` (it failed or was cancelled) carrying /query_result's entry for the job, and the stream
ends. The stream is an onlooker: a client that disconnects leaves the job running (``cancel=False``).

Written on Starlette's ``StreamingResponse`` as routes_chat.py's stream is: ``sse-starlette`` comes
only with the ``mcp`` extra, and the format (``event:``/``data:`` lines, a blank line) is small.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import aclosing

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from acestep.jobs.failures import Refusal, RefusalCause
from acestep.jobs.queue import JobQueue
from acestep.serving import auth
from acestep.serving.openapi import errors
from acestep.serving.wire import UNKNOWN_TASK, query_entry
from acestep.worker.job import Job, JobState

router = APIRouter(tags=["events"], dependencies=[Depends(auth.require_key)])

KEEP_ALIVE_S = 10.0  # a comment line at least this often keeps proxies from closing an idle stream
EVENTS_DOC = {
    200: {
        "description": "``event: progress`` lines with JSON data {task_id, status, progress, stage, "
        "queue_position} as the job moves, then one ``event: result`` (succeeded) or ``event: error`` "
        "(failed or cancelled) whose data is the job's /query_result entry; then the stream ends.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    **errors(404),
}


def sse(event: str, data: dict) -> str:
    """One server-sent event: its name and one line of JSON."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def progress_data(job: Job, position: int | None) -> dict:
    return {
        "task_id": job.id,
        "status": str(job.state),
        "progress": job.progress,
        "stage": job.stage,
        "queue_position": position,
    }


async def job_events(service, queue: JobQueue, job: Job) -> AsyncIterator[str]:
    """The event stream of one job, from its current state to its end."""
    last_sent, beat = None, time.monotonic()
    async with aclosing(service.watch(job, cancel=False)) as snapshots:
        async for snapshot in snapshots:
            job = snapshot
            if JobState(job.state).ended:
                break
            position = await run_in_threadpool(queue.position, job.id) if job.state == "queued" else None
            data = progress_data(job, position)
            if data != last_sent:
                last_sent, beat = data, time.monotonic()
                yield sse("progress", data)
            elif time.monotonic() - beat >= KEEP_ALIVE_S:
                beat = time.monotonic()
                yield ": keep-alive\n\n"
    entry = query_entry(job.id, job)
    yield sse("result" if job.state == JobState.SUCCEEDED else "error", entry)


@router.get("/v1/jobs/{task_id}/events", response_class=StreamingResponse, responses=EVENTS_DOC)
async def job_event_stream(request: Request, task_id: str) -> StreamingResponse:
    """Follow a job (from /release_task) to its end as server-sent events; leaving early does not
    cancel it."""
    queue = request.app.state.queue
    job = await run_in_threadpool(queue.get, task_id)
    if job is None:
        raise Refusal(RefusalCause.NOT_FOUND, UNKNOWN_TASK)
    stream = job_events(request.app.state.service, queue, job)
    # No caching or proxy buffering: each event should reach the client as it is sent.
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
