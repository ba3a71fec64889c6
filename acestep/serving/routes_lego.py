"""POST /lego for DAW clients: upload a track, get a stem that fits it back as audio (or URLs).

The form follows the plugin's wrapper: ``audio_file``, ``track_type``, ``bpm``, optional
``key_scale``, ``audio_duration`` (read from the file when omitted), ``batch_size``, ``caption``
(a default per track), ``seed``, ``format``, ``keep_alive``; ``response=json`` for URLs.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from acestep.errors import JobErrorKind, validation_message
from acestep.fields import BY_NAME
from acestep.jobs.failures import Refusal
from acestep.jobs.service import discard
from acestep.jobs.uploads import save_upload
from acestep.request import GenerationRequest
from acestep.serving import auth
from acestep.serving.body import read_body
from acestep.serving.inputs import check_audio
from acestep.serving.openapi import errors
from acestep.serving.routes_compat import MEDIA_TYPES, body_schema, submit
from acestep.serving.wire import audio_url, envelope, result_items
from acestep.serving.wire_models import audio
from acestep.settings import current as current_settings
from acestep.settings import value as setting_value
from acestep.tasks import AUDIO_FORMATS, MAX_TRACK_NAME_CHARS, TRACK_NAMES, default_caption, track_notes

router = APIRouter(tags=["generation"])

FORM_FIELDS = ("track_type", "bpm", "key_scale", "audio_duration", "batch_size", "caption", "seed", "format")
TIMEOUT_S: float = setting_value(current_settings(), "ACESTEP_GENERATION_TIMEOUT")


LEGO_FORM = {
    "audio_file": {
        "type": "string",
        "format": "binary",
        "description": "the track to build on (WAV, MP3 or FLAC); its length is the stem's unless set",
    },
    # Any name (upstream's rule); one outside the twelve trained ones is a warning (acestep.tasks).
    "track_type": {
        "type": "string",
        "examples": list(TRACK_NAMES),
        "maxLength": MAX_TRACK_NAME_CHARS,
        "description": f"the stem to make: {', '.join(TRACK_NAMES)} (another name is a warning)",
    },
    # Types and bounds are the field table's (acestep.fields), so they follow acestep.tasks.
    **{
        name: BY_NAME[name].schema()
        for name in ("bpm", "key_scale", "audio_duration", "batch_size", "caption", "seed")
    },
    "format": {
        "type": "string",
        "enum": list(AUDIO_FORMATS),
        "default": "wav",
        "description": "the stem's audio format",
    },
    "keep_alive": BY_NAME["keep_alive"].schema(),
    "lora": {"type": "string", "description": "LoRA adapter name(s), comma-separated"},
    "lora_scale": {"type": "string", "description": "one scale, or one per adapter"},
    "response": {
        "type": "string",
        "enum": ["audio", "json"],
        "description": "audio (default): the first stem's bytes; json: the envelope with URLs",
    },
    "ai_token": {"type": "string", "description": "the API key, for clients that send no header"},
}
LEGO_EXAMPLE = {"track_type": "drums", "bpm": 120, "key_scale": "A minor", "format": "wav"}


@router.post(
    "/lego",
    openapi_extra=body_schema(
        LEGO_FORM, ["audio_file", "track_type", "bpm"], "multipart/form-data", {"drums": LEGO_EXAMPLE}
    ),
    response_class=FileResponse,
    responses=audio(
        "the first stem; X-Task-Id and X-Seed name its job and seed (response=json: the envelope)"
    )
    | errors(429, 503, 504),
)
async def lego(request: Request):
    fields, files = await read_body(request)
    auth.check(request, fields.pop("ai_token", None))
    upload = files.get("audio_file")
    if upload is None:
        raise Refusal(JobErrorKind.INPUT, "audio_file is required (multipart upload of WAV, MP3 or FLAC)")
    track = str(fields.get("track_type") or "").strip().lower()
    if not track:
        raise Refusal(JobErrorKind.INPUT, f"track_type is required, e.g. one of {', '.join(TRACK_NAMES)}")
    if not str(fields.get("bpm") or "").strip():
        raise Refusal(JobErrorKind.INPUT, "bpm is required (the tempo of the uploaded track)")
    config = request.app.state.config
    path = await save_upload(upload, config.uploads_dir, config.max_upload_bytes, prefix="lego_")
    try:  # an unreadable upload (an UploadError) or a wrong field: the upload goes
        seconds = await run_in_threadpool(check_audio, path, "audio_file")
        generation = _lego_request(request, fields, track, path, seconds)
    except Refusal:
        discard([path])
        raise
    job = await submit(request, generation, [path])
    # A client that leaves frees the GPU for others: nobody would read the stem. A failure is a
    # Refusal, answered with the status of acestep/jobs/failures.py.
    job = await request.app.state.service.await_job(job, TIMEOUT_S, gone=request.is_disconnected)
    if str(fields.get("response") or request.query_params.get("response") or "").lower() == "json":
        return JSONResponse(  # the route's documented answer is audio (response_class)
            envelope(
                {
                    "task_id": job.id,
                    "urls": [audio_url(p) for p in job.result.audio_paths],
                    "items": result_items(job),
                    "warnings": track_notes(track),
                }
            )
        )
    first = Path(job.result.audio_paths[0])
    return FileResponse(
        first,
        media_type=MEDIA_TYPES.get(first.suffix.lower(), "application/octet-stream"),
        headers={"X-Task-Id": job.id, "X-Seed": str(job.result.seeds[0])},
        filename=f"{track}{first.suffix}",
    )


def _lego_request(
    request: Request, fields: dict, track: str, source: Path, seconds: float
) -> GenerationRequest:
    values = {
        "task_type": "lego",
        "track_name": track,
        "src_audio": str(source),
        "caption": str(fields.get("caption") or "").strip() or default_caption(track),
        "bpm": fields.get("bpm"),
        "batch_size": fields.get("batch_size") or 1,
        "audio_format": str(fields.get("format") or "wav").lower(),
        "inference_steps": request.app.state.variant.default_steps,
    }
    if str(fields.get("key_scale") or "").strip():
        values["key_scale"] = fields["key_scale"]
    if str(fields.get("seed") or "").strip():
        values["seed"] = fields["seed"]
    for name in ("keep_alive", "lora", "lora_scale"):
        if str(fields.get(name) or "").strip():
            values[name] = fields[name]
    duration = str(fields.get("audio_duration") or "").strip()
    try:
        values["audio_duration"] = float(duration) if duration else seconds
    except ValueError:
        raise Refusal(
            JobErrorKind.INPUT, f"audio_duration must be a number of seconds, got {duration!r}"
        ) from None
    try:
        return GenerationRequest(**values)
    except ValidationError as exc:
        raise Refusal(JobErrorKind.INPUT, validation_message(exc)) from None
