"""What /openapi.json says beyond the routes themselves: the areas (tags), the error answers, and
the API key as a security scheme.

Routes name their own tags and the errors only they answer (``errors(404)``); ``install`` adds what
every route shares: the key's 401/429 on each protected operation (all but /health), 400/413/415 on
each that reads a body, and no 422 (validation failures are answered 400: serving/app.py). The docs
pages themselves (/docs, /redoc, /openapi.json) hold no secret and are served without the key, so
Swagger UI can fetch the schema and offer its Authorize button.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from acestep.errors import JobErrorKind
from acestep.jobs.failures import RefusalCause, status_of
from acestep.serving.wire_models import ErrorDetail

DESCRIPTION = (
    "ACE-Step music generation: upstream's REST API (/release_task, /query_result, ...) and more. "
    "Queue a job with POST /release_task, then poll POST /query_result or follow "
    "GET /v1/jobs/{task_id}/events; the result's `file` is a /v1/audio URL. "
    'Errors are JSON `{"detail": ...}` with the reason. docs/api.md has the full guide.'
)
TAGS = [
    {"name": "generation", "description": "Queue music jobs: /release_task (upstream's), /lego, helpers."},
    {"name": "results", "description": "Follow jobs and fetch their audio: /query_result, /v1/audio."},
    {"name": "events", "description": "A job's progress as server-sent events, until its result."},
    {"name": "models", "description": "The DiT models served, and loading or switching them."},
    {"name": "memory", "description": "What the GPU worker holds; unloading it; cancelling jobs."},
    {"name": "lora", "description": "LoRA adapters: list, load into the DiT, scale, unload."},
    {"name": "lm", "description": "The 5 Hz language model's helpers (caption and lyrics formatting)."},
    {"name": "chat", "description": "OpenAI/OpenRouter-style chat completions that return audio."},
    {"name": "training", "description": "LoRA/LoKr training runs (ACESTEP_TRAINING=on)."},
    {
        "name": "dataset",
        "description": "Training datasets: scan, label, save, preprocess (ACESTEP_TRAINING=on).",
    },
    {"name": "health", "description": "Liveness and queue statistics."},
]
SECURITY_SCHEME = "bearerAuth"
_SCHEMES = {
    SECURITY_SCHEME: {
        "type": "http",
        "scheme": "bearer",
        "description": "The server's ACESTEP_API_KEY as `Authorization: Bearer <key>` (the bare key in "
        "the header is accepted too). Routes with a body also take it as upstream's `ai_token` field. "
        "Every route but /health needs it when a key is set.",
    }
}
# What each error status means here; the status is the failure table's (acestep/jobs/failures.py).
_WHY = (
    (
        JobErrorKind.INPUT,
        "the request is wrong or asks for what is not configured: the detail says which field",
    ),
    (RefusalCause.UNAUTHORIZED, "the API key is missing or wrong"),
    (RefusalCause.FORBIDDEN, "a path outside the folders clients may name"),
    (RefusalCause.NOT_FOUND, "no such task, adapter or file"),
    (RefusalCause.CONFLICT, "the server's state refuses it now (e.g. a run already going)"),
    (RefusalCause.TOO_LARGE, "the body or an upload is over its size limit"),
    (RefusalCause.UNSUPPORTED_MEDIA, "a body or upload this server does not read"),
    (RefusalCause.THROTTLED, "too many failed keys from this address, or the queue is full (Retry-After)"),
    (RefusalCause.UNAVAILABLE, "the queue, the worker or the upload slots are busy or down (Retry-After)"),
    (RefusalCause.TIMEOUT, "the job did not finish within ACESTEP_GENERATION_TIMEOUT; it was cancelled"),
)
_ERROR_REF = {"$ref": f"#/components/schemas/{ErrorDetail.__name__}"}
# status -> its documented answer, built once.
ERRORS: dict[int, dict[str, Any]] = {
    status_of(cause): {"description": why, "content": {"application/json": {"schema": _ERROR_REF}}}
    for cause, why in _WHY
}
_KEYED = (status_of(RefusalCause.UNAUTHORIZED), status_of(RefusalCause.THROTTLED))
_BODY = (
    status_of(JobErrorKind.INPUT),
    status_of(RefusalCause.TOO_LARGE),
    status_of(RefusalCause.UNSUPPORTED_MEDIA),
)
OPEN_PATHS = frozenset({"/health"})  # answered without the key


def errors(*statuses: int) -> dict[int, dict[str, Any]]:
    """The documented error answers for ``statuses`` (a route's ``responses=``)."""
    return {status: ERRORS[status] for status in statuses}


def docs_paths(app: FastAPI) -> frozenset[str]:
    """The documentation pages, served without the key (they hold no secret)."""
    return frozenset(
        p for p in (app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url) if p
    )


def install(app: FastAPI, keyed: bool) -> None:
    """Replace ``app.openapi`` with one that adds the shared answers (and, with a key, the
    security scheme) to FastAPI's schema, once."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _finish(build(), keyed)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _finish(schema: dict[str, Any], keyed: bool) -> None:
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {})[ErrorDetail.__name__] = ErrorDetail.model_json_schema()
    for name in ("HTTPValidationError", "ValidationError"):  # 422 is never answered here
        components["schemas"].pop(name, None)
    if keyed:
        components["securitySchemes"] = _SCHEMES
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            if "requestBody" in operation:
                shared = _BODY
            else:  # a wrong query or path parameter is a 400 too
                shared = _BODY[:1] if operation.get("parameters") else ()
            if keyed and path not in OPEN_PATHS:
                operation["security"] = [{SECURITY_SCHEME: []}]
                shared += _KEYED
            for status in shared:
                responses.setdefault(str(status), ERRORS[status])
