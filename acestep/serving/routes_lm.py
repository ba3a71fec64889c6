"""``POST /format_input``: the LM rewrites a caption and lyrics and fills in the metadata.

Synchronous for the caller, but the work is an ordinary queued job (``lm_only``): it waits its
turn, passes the memory checks, and runs in the worker; this handler never touches the GPU.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from pydantic import ValidationError

from acestep.errors import JobErrorKind, validation_message
from acestep.fields import BY_NAME
from acestep.jobs.failures import Refusal
from acestep.request import GenerationRequest
from acestep.serving import auth
from acestep.serving.body import read_body
from acestep.serving.routes_compat import body_schema
from acestep.serving.wire import envelope

router = APIRouter(tags=["lm"])
FORMAT_TIMEOUT_S = 600.0
# param_obj keys (upstream's names) -> request fields
PARAM_FIELDS = {
    "duration": "audio_duration",
    "bpm": "bpm",
    "key": "key_scale",
    "key_scale": "key_scale",
    "keyscale": "key_scale",
    "time_signature": "time_signature",
    "timesignature": "time_signature",
    "language": "vocal_language",
    "vocal_language": "vocal_language",
}
FORMAT_SCHEMA = body_schema(
    {
        "prompt": {"type": "string", "description": "the caption to tidy"},
        "lyrics": {"type": "string", "description": "the lyrics to tidy"},
        "temperature": {"type": "number", "description": BY_NAME["lm_temperature"].description},
        "param_obj": {
            "type": "object",
            "description": "known metadata the LM keeps: " + ", ".join(PARAM_FIELDS),
        },
        "time_signature": {"type": "string", "description": BY_NAME["time_signature"].description},
    }
)


def format_request(fields: dict) -> GenerationRequest:
    """The LM-only request behind a /format_input body; a Refusal (JobErrorKind.INPUT) with the reason."""
    params = fields.get("param_obj") or {}
    if isinstance(params, str):
        try:
            params = json.loads(params) if params.strip() else {}
        except ValueError:
            raise Refusal(JobErrorKind.INPUT, "param_obj must be a JSON object") from None
    if not isinstance(params, dict):
        raise Refusal(JobErrorKind.INPUT, "param_obj must be a JSON object")
    values: dict = {
        "use_format": True,
        "caption": fields.get("prompt") or "",
        "lyrics": fields.get("lyrics") or "",
    }
    if fields.get("temperature") not in (None, ""):
        values["lm_temperature"] = fields["temperature"]
    if fields.get("time_signature") not in (None, ""):
        values["time_signature"] = fields["time_signature"]
    for key, field in PARAM_FIELDS.items():
        if params.get(key) not in (None, ""):
            values[field] = params[key]
    try:
        return GenerationRequest(**values)
    except ValidationError as exc:
        raise Refusal(JobErrorKind.INPUT, validation_message(exc)) from None


@router.post("/format_input", openapi_extra=FORMAT_SCHEMA)
async def format_input(request: Request) -> dict:
    fields, _ = await read_body(request)
    auth.check(request, fields.pop("ai_token", None))
    service = request.app.state.service
    generation = format_request(fields)
    # Without an LM, the service refuses it as it refuses thinking on /release_task (a 400; upstream: 503).
    job = await service.submit(generation, lm_only=True, features=["format_input"])
    job = await service.await_job(job, FORMAT_TIMEOUT_S, gone=request.is_disconnected)
    metas = job.result.metas
    names = ("caption", "lyrics", "bpm", "key_scale", "time_signature", "duration", "vocal_language")
    return envelope({name: metas.get(name) for name in names})
