"""Memory and job control: POST /unload (also /v1/unload and /v1/models/unload), GET /v1/memory,
POST /v1/cancel, and the Prometheus GET /metrics (POST /v1/load: routes_models.py).

Loads and unloads run on the GPU worker between jobs; the handlers wait for them through
``acestep.jobs.waits`` (bounded, off the shared thread pool, withdrawn when the client goes).
"""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Depends, Request, Response

from acestep.errors import JobErrorKind, shown
from acestep.jobs.failures import Refusal, RefusalCause, command_refusal
from acestep.jobs.waits import CommandTimeout, run_command
from acestep.serving import auth
from acestep.serving.body import read_body
from acestep.serving.params import MAX_TASK_ID_CHARS
from acestep.serving.routes_compat import body_schema
from acestep.serving.wire import envelope
from acestep.worker.dispatcher import BusyError

router = APIRouter(tags=["memory"], dependencies=[Depends(auth.require_key)])


async def _wait(request: Request, function, *args):
    """A command that waits for the running job: 503 when it still runs past the wait limit;
    withdrawn when the client leaves."""
    try:
        return await run_command(function, *args, gone=request.is_disconnected)
    except CommandTimeout as exc:
        raise command_refusal(exc) from None


UNLOAD_SCHEMA = body_schema(
    {
        "level": {
            "type": "string",
            "enum": ["park", "free"],
            "description": "park: the weights move to CPU memory (quick to wake); free: released",
        }
    }
)


# The spellings clients send (acestep extensions; upstream has no unload route): one handler.
@router.post("/unload", openapi_extra=UNLOAD_SCHEMA)
@router.post("/v1/unload", openapi_extra=UNLOAD_SCHEMA)
@router.post("/v1/models/unload", openapi_extra=UNLOAD_SCHEMA)
async def unload(request: Request) -> dict:
    """Body (optional): ``{"level": "park" | "free"}`` (default free). Returns the measured report."""
    fields, _ = await read_body(request)
    level = str(fields.get("level") or request.query_params.get("level") or "free").strip().lower()
    if level not in ("park", "free"):
        raise Refusal(JobErrorKind.INPUT, f"level must be park or free, got {shown(level)}")
    try:
        report = await _wait(request, request.app.state.manager.unload, level)
    except BusyError as exc:
        raise command_refusal(exc) from None
    return envelope(report)


@router.get("/v1/memory")
async def memory(request: Request) -> dict:
    return envelope(await anyio.to_thread.run_sync(request.app.state.manager.get_status))


@router.post(
    "/v1/cancel",
    openapi_extra=body_schema(
        {"task_id": {"type": "string", "description": "the job to cancel"}}, ["task_id"]
    ),
)
async def cancel(request: Request) -> dict:
    fields, _ = await read_body(request)
    task_id = str(fields.get("task_id") or "")
    if not task_id:
        raise Refusal(JobErrorKind.INPUT, "task_id is required")
    if len(task_id) > MAX_TASK_ID_CHARS:
        raise Refusal(JobErrorKind.INPUT, f"task_id: at most {MAX_TASK_ID_CHARS} characters")
    outcome = await anyio.to_thread.run_sync(request.app.state.queue.cancel, task_id)
    if outcome == "unknown":
        raise Refusal(RefusalCause.NOT_FOUND, f"unknown task_id {task_id!r}")
    return envelope({"task_id": task_id, "outcome": outcome})


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Queue depth, jobs by state, per-worker residency and VRAM, job durations (Prometheus text)."""
    from acestep.serving.metrics import CONTENT_TYPE, render

    stats = await anyio.to_thread.run_sync(request.app.state.queue.stats)  # waits for no job
    return Response(render(stats), media_type=CONTENT_TYPE)
