"""Upstream-compatible routes: /release_task, /query_result, /v1/audio, /health,
/v1/stats, /create_random_sample (/format_input: routes_lm). Handlers queue work, never touch the GPU."""

from __future__ import annotations

import random
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from acestep import __version__
from acestep.errors import JobErrorKind, validation_message
from acestep.examples import EXAMPLES, SIMPLE_EXAMPLES
from acestep.fields import FIELDS
from acestep.fields.schema import body_properties
from acestep.jobs.failures import Refusal, RefusalCause
from acestep.jobs.outputs import DEFAULT_AUDIO_FORMAT, MEDIA_TYPES
from acestep.jobs.queue import QueueUnavailable
from acestep.jobs.service import discard
from acestep.jobs.uploads import UploadError, confine
from acestep.request import GenerationRequest
from acestep.serving import auth
from acestep.serving.body import read_body
from acestep.serving.inputs import Inputs, settle_inputs, take_inputs
from acestep.serving.inventory import gpu_fields
from acestep.serving.lm_params import REST_LM_DEFAULTS, lm_fields, lm_warnings
from acestep.serving.openapi import errors
from acestep.serving.params import (
    MAX_TASK_ID_CHARS,
    MAX_TASK_IDS,
    ParamError,
    parse_release_params,
    parse_task_id_list,
)
from acestep.serving.wire import envelope, query_entry
from acestep.serving.wire_models import Health, ReleasedTask, Stats, TaskEntry, audio, ok
from acestep.tasks import track_notes

router = APIRouter()

REST_DEFAULTS = {"audio_format": DEFAULT_AUDIO_FORMAT}  # upstream's REST default (jobs/outputs.py)


def body_schema(
    properties: dict,
    required: list[str] = (),
    content: str = "application/json",
    examples: dict[str, dict] | None = None,
) -> dict:
    """An OpenAPI request body for routes that parse their own bodies (docs and fuzzing read it);
    ``examples``: name -> a body."""
    schema = {"type": "object", "properties": properties, "required": list(required)}
    media: dict = {"schema": schema}
    if examples:
        media["examples"] = {name: {"value": value} for name, value in examples.items()}
    return {"requestBody": {"content": {content: media}}}


# Every field of the one table (acestep/fields), with the defaults this route applies, and the
# places upstream's clients put the key and nested fields.
RELEASE_BODY = body_schema(
    body_properties(FIELDS, REST_DEFAULTS | REST_LM_DEFAULTS)
    | {
        "ai_token": {"type": "string", "description": "the API key, for clients that send no header"},
        "param_obj": {"type": "object", "description": "any field above, looked up after the top level"},
        "metas": {
            "type": "object",
            "description": "any field above, looked up last (also read as: meta, metadata, user_metadata)",
        },
    },
    examples={"instrumental": EXAMPLES[0], "song": EXAMPLES[1]},
)
RELEASE_DOC = (
    "Queue a generation job; answers at once with its task_id (follow it with /query_result or "
    "/v1/jobs/{task_id}/events). Each field is read at the top level, then in param_obj, then in "
    "metas, under its name or an alias. JSON or a form; multipart uploads ctx_audio/src_audio and "
    "ref_audio/reference_audio carry the source and reference audio."
)


async def build_request(
    request: Request, fields: dict, files: dict
) -> tuple[GenerationRequest, list[Path], list]:
    """Turn parsed fields and uploads into a validated request; uploads are saved (and deleted
    again if anything is wrong). Raises a Refusal with the reason."""
    config = request.app.state.config
    try:
        params = parse_release_params(fields)
    except ParamError as exc:
        raise Refusal(JobErrorKind.INPUT, f"{exc.field}: {exc}") from None
    unsupported = [name for name in ("analysis_only", "full_analysis_only") if name in params.lm_features]
    if unsupported:
        raise Refusal(
            JobErrorKind.INPUT,
            f"{', '.join(unsupported)} (audio understanding) is not supported in this version",
        )
    values = REST_DEFAULTS | lm_fields(params.lm_options) | params.fields
    inputs = Inputs()
    saved = inputs.saved
    try:
        await take_inputs(inputs, config, values, files, fields)
        try:
            generation = GenerationRequest(**values)
        except ValidationError as exc:
            raise Refusal(JobErrorKind.INPUT, validation_message(exc)) from None
        generation, unused = await settle_inputs(generation, inputs)  # only what the task reads
        request.app.state.service.require_lm(generation, params.lm_features)  # a Refusal: 400
    except BaseException:  # any failure, a refused upload or a client gone included: nothing stays behind
        discard(saved)
        raise
    warnings = list(params.ignored and [f"ignored (no effect here): {', '.join(params.ignored)}"])
    warnings += unused + track_notes(generation.track_name, generation.track_classes)
    warnings += generation.field_notes  # fields sent that cannot act on this request
    warnings += lm_warnings(params.lm_options, generation.uses_lm, request.app.state.lm_name)
    # The DiT it runs on: loaded on demand here, routed in a cluster; an unknown one is refused.
    request.state.model = params.model
    return generation, saved, warnings


async def submit(request: Request, generation: GenerationRequest, saved: list[Path], lm_only: bool = False):
    """Queue through the app's ``JobService``: a refusal is a ``Refusal`` (its status from
    acestep/jobs/failures.py, answered by serving/app.py), and the uploads are then deleted."""
    model = getattr(request.state, "model", None)
    return await request.app.state.service.submit(generation, saved, lm_only=lm_only, model=model)


@router.post(
    "/release_task",
    tags=["generation"],
    description=RELEASE_DOC,
    openapi_extra=RELEASE_BODY,
    responses=ok(ReleasedTask) | errors(429, 503),
)
async def release_task(request: Request) -> dict:
    fields, files = await read_body(request)
    token = fields.pop("ai_token", None)
    auth.check(request, token)
    generation, saved, warnings = await build_request(request, fields, files)
    job = await submit(request, generation, saved)
    warnings += getattr(job, "warnings", [])
    try:
        position = await run_in_threadpool(request.app.state.queue.position, job.id)
    except QueueUnavailable:  # the job is queued; only its place could not be read
        position = None
    return envelope({"task_id": job.id, "status": "queued", "queue_position": position, "warnings": warnings})


@router.post(
    "/query_result",
    tags=["results"],
    openapi_extra=body_schema(
        {
            "task_id_list": {
                "type": ["array", "string"],
                "items": {"type": "string", "maxLength": MAX_TASK_ID_CHARS},
                "maxItems": MAX_TASK_IDS,
                "description": "task ids from /release_task (a JSON array, or one JSON-encoded as text)",
            },
            "ai_token": {"type": "string", "description": "the API key, for clients that send no header"},
        },
        ["task_id_list"],
        examples={"one task": {"task_id_list": ["0b5c3f0e-6d1a-4d2b-9a57-0c9d1f6a2b11"]}},
    ),
    responses=ok(list[TaskEntry]) | errors(503),
)
async def query_result(request: Request) -> dict:
    fields, _ = await read_body(request)
    auth.check(request, fields.pop("ai_token", None))
    try:
        ids = parse_task_id_list(fields.get("task_id_list", fields.get("task_ids")))
    except ParamError as exc:
        raise Refusal(JobErrorKind.INPUT, f"{exc.field}: {exc}") from None
    queue = request.app.state.queue

    def entries() -> list[dict]:
        return [query_entry(task_id, queue.get(task_id), queue.position(task_id)) for task_id in ids]

    return envelope(await run_in_threadpool(entries))


@router.get(
    "/v1/audio",
    tags=["results"],
    dependencies=[Depends(auth.require_key)],
    response_class=FileResponse,
    responses=audio("the result file, as its format's media type") | errors(403, 404),
)
async def audio(request: Request, path: str) -> FileResponse:
    results = request.app.state.config.results_dir
    try:
        file = confine(path, [results], "path")
    except UploadError:
        raise Refusal(RefusalCause.FORBIDDEN, "Access denied: path outside allowed directory") from None
    try:
        found = file.is_file()
    except OSError:  # e.g. a name too long for the filesystem
        found = False
    if not found:
        raise Refusal(RefusalCause.NOT_FOUND, "Audio file not found")
    return FileResponse(file, media_type=MEDIA_TYPES.get(file.suffix.lower(), "application/octet-stream"))


@router.get("/health", tags=["health"], responses=ok(Health))
async def health(request: Request) -> dict:
    """200 while this process serves; in a cluster, ``queue`` says whether Redis answers."""
    queue = request.app.state.queue

    def look() -> tuple[str, dict]:
        try:
            state = queue.model_state()
            if not queue.routes_by_model:
                return state, gpu_fields(request.app.state)  # upstream's inventory fields
            workers = queue.workers()
            live = sum(1 for w in workers if w["alive"])
            return state, {"queue": "ok", "live_workers": live} | gpu_fields(request.app.state)
        except QueueUnavailable as exc:
            return "unknown", {"queue": "unavailable", "queue_error": str(exc)}

    state, extra = await run_in_threadpool(look)
    return envelope(
        {
            "status": "ok",
            "service": "ACE-Step API",
            "version": __version__,
            "models_initialized": state == "ready",
            "model_state": state,
            "loaded_model": request.app.state.model_name,
            "llm_initialized": request.app.state.lm_name is not None,
            "loaded_lm_model": request.app.state.lm_name,
        }
        | extra
    )


@router.get("/v1/stats", tags=["health"], dependencies=[Depends(auth.require_key)], responses=ok(Stats))
async def stats(request: Request) -> dict:
    return envelope(await run_in_threadpool(request.app.state.queue.stats))


@router.post(
    "/create_random_sample",
    tags=["generation"],
    openapi_extra=body_schema(
        {
            "sample_type": {
                "type": "string",
                "description": "simple_mode (default): a description for sample mode; else a full example",
            },
            "ai_token": {"type": "string", "description": "the API key, for clients that send no header"},
        }
    ),
)
async def create_random_sample(request: Request) -> dict:
    fields, _ = await read_body(request)
    auth.check(request, fields.pop("ai_token", None))
    if str(fields.get("sample_type") or "simple_mode") == "simple_mode":
        return envelope(dict(random.choice(SIMPLE_EXAMPLES)))
    return envelope(dict(random.choice(EXAMPLES)))
