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
from acestep.jobs.failures import Refusal, RefusalCause
from acestep.jobs.outputs import MEDIA_TYPES
from acestep.jobs.queue import QueueUnavailable
from acestep.jobs.service import discard
from acestep.jobs.uploads import UploadError, confine
from acestep.request import GenerationRequest
from acestep.serving import auth
from acestep.serving.body import read_body
from acestep.serving.inputs import Inputs, settle_inputs, take_inputs
from acestep.serving.inventory import gpu_fields
from acestep.serving.lm_params import lm_fields, lm_warnings
from acestep.serving.params import ParamError, parse_release_params, parse_task_id_list
from acestep.serving.wire import envelope, query_entry
from acestep.tasks import track_notes

router = APIRouter()

REST_DEFAULTS = {"audio_format": "mp3"}  # upstream's REST default (the Python API writes flac)
EXAMPLES = (
    {
        "caption": "warm lo-fi hip hop, dusty piano, vinyl crackle",
        "lyrics": "[Instrumental]",
        "bpm": 84,
        "duration": 60,
        "keyscale": "D minor",
        "language": "en",
        "timesignature": "4",
    },
    {
        "caption": "upbeat synth-pop, bright pads, four-on-the-floor",
        "lyrics": "[verse]\nCity lights\n[chorus]\nTonight",
        "bpm": 120,
        "duration": 90,
        "keyscale": "A major",
        "language": "en",
        "timesignature": "4",
    },
)
SIMPLE_EXAMPLES = (
    {"description": "a calm piano piece for a rainy evening", "instrumental": True, "vocal_language": "en"},
    {
        "description": "an upbeat pop song about summer road trips",
        "instrumental": False,
        "vocal_language": "en",
    },
)


def _rest_schema() -> dict:
    """GenerationRequest's schema with the defaults this route applies (REST_DEFAULTS) stated."""
    schema = GenerationRequest.model_json_schema(by_alias=False)
    for name, default in REST_DEFAULTS.items():
        schema["properties"][name]["default"] = default
    return schema


GENERATION_REQUEST_SCHEMA = {"requestBody": {"content": {"application/json": {"schema": _rest_schema()}}}}


def body_schema(properties: dict, required: list[str] = (), content: str = "application/json") -> dict:
    """An OpenAPI request body for routes that parse their own bodies (docs and fuzzing read it)."""
    schema = {"type": "object", "properties": properties, "required": list(required)}
    return {"requestBody": {"content": {content: {"schema": schema}}}}


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


@router.post("/release_task", openapi_extra=GENERATION_REQUEST_SCHEMA)
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
    openapi_extra=body_schema(
        {"task_id_list": {"type": "array", "items": {"type": "string"}}}, ["task_id_list"]
    ),
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


@router.get("/v1/audio", dependencies=[Depends(auth.require_key)])
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


@router.get("/health")
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


@router.get("/v1/stats", dependencies=[Depends(auth.require_key)])
async def stats(request: Request) -> dict:
    return envelope(await run_in_threadpool(request.app.state.queue.stats))


@router.post("/create_random_sample")
async def create_random_sample(request: Request) -> dict:
    fields, _ = await read_body(request)
    auth.check(request, fields.pop("ai_token", None))
    if str(fields.get("sample_type") or "simple_mode") == "simple_mode":
        return envelope(dict(random.choice(SIMPLE_EXAMPLES)))
    return envelope(dict(random.choice(EXAMPLES)))
