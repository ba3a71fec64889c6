"""The response shapes /openapi.json documents, as pydantic models.

They describe what ``acestep.serving.wire`` and the routes build as plain dicts; routes name them
in ``responses=`` (documentation only), so the bytes a route sends stay the dicts' own. Each model
allows more keys than it lists: upstream's clients read the named ones, and a payload may grow.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from acestep.jobs.outputs import MEDIA_TYPES

Data = TypeVar("Data")


class Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Envelope(Open, Generic[Data]):
    """Upstream's envelope around every JSON answer of a route (``wire.envelope``)."""

    data: Data
    code: int = Field(200, description="200 on success (the HTTP status carries failures)")
    error: str | None = Field(None, description="always null on a 200")
    timestamp: int = Field(description="when the answer was made, in milliseconds since the epoch")
    extra: Any = Field(None, description="always null")


class ErrorDetail(BaseModel):
    """Every 4xx/5xx: the reason, in words (serving/app.py, serving/replies.py)."""

    detail: str = Field(description="what was wrong, and what to do about it")


class ReleasedTask(Open):
    task_id: str = Field(description="the job's id: /query_result, /v1/jobs/{task_id}/events, /v1/cancel")
    status: str = Field(description="'queued'")
    queue_position: int | None = Field(description="1: next to run; null when it could not be read")
    warnings: list[str] = Field(description="how the request was read: ignored fields, dropped inputs")


class TaskEntry(Open):
    """One job in /query_result's answer (``wire.query_entry``)."""

    task_id: str
    status: int = Field(description="0: queued or running, 1: succeeded, 2: failed, cancelled or unknown")
    result: str = Field(
        description="a JSON-encoded list of result items (upstream's shape): file (a /v1/audio URL), "
        "seed, duration, metas, progress, stage, error"
    )
    progress_text: str = Field(description="e.g. 'diffusion 40%' or 'queued (position 2)'")
    progress: float | None = Field(None, description="0-1, never lower than before")
    stage: str | None = Field(None, description="queued, loading, lm, diffusion, decoding, succeeded, ...")
    error: str | None = Field(None, description="why the job failed; null otherwise")
    worker: str | None = Field(None, description="the cluster worker that ran it (null on one server)")


class Health(Open):
    status: str = Field(description="'ok' while the process serves")
    service: str
    version: str
    models_initialized: bool = Field(description="the served DiT is loaded on the GPU worker")
    model_state: str = Field(description="the worker's model state ('unknown' when the queue is down)")
    loaded_model: str
    llm_initialized: bool
    loaded_lm_model: str | None


class JobCounts(Open):
    total: int
    queued: int
    running: int
    succeeded: int
    failed: int


class Stats(Open):
    backend: str = Field(description="'local' (the embedded queue) or 'redis' (a cluster)")
    jobs: JobCounts
    queue_size: int
    queue_maxsize: int


class ModelList(Open):
    models: list[dict[str, Any]] = Field(
        description="each DiT served: name, is_default, is_loaded, supported_task_types, ..."
    )
    default_model: str | None
    lm_models: list[dict[str, Any]]
    loaded_lm_model: str | None
    llm_initialized: bool


class LoraList(Open):
    directory: str = Field(description="ACESTEP_LORA_DIR")
    model_variant: str | None
    loras: list[dict[str, Any]] = Field(description="each adapter: name, base_variant, rank, compatible, ...")
    problems: list[Any] = Field(description="files in the folder that are not usable adapters, with why")
    default: dict[str, Any] = Field(description="the adapters requests that name none run with")
    resident: Any = Field(None, description="what the GPU worker holds now")


def ok(model: type) -> dict:
    """A route's documented 200: ``model`` inside the envelope."""
    return {200: {"model": Envelope[model]}}


# The audio a route may answer with, from the one table of output formats (acestep/jobs/outputs.py).
AUDIO_CONTENT = {
    media: {"schema": {"type": "string", "format": "binary"}} for media in dict.fromkeys(MEDIA_TYPES.values())
}


def audio(description: str) -> dict:
    return {200: {"description": description, "content": AUDIO_CONTENT}}
