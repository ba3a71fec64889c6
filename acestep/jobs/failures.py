"""One table for every face: why a job was refused or failed, and the HTTP status that says so.

REST routes answer ``FAILURE_STATUS[cause]``; the UI and MCP, which have no status, show the same
reason text. A refusal happens before anything is queued (``Refusal``); a failure is a job that
ran and ended with a :class:`~acestep.errors.JobErrorKind`, which ``await_job`` turns into the same
``Refusal``. The statuses follow what the routes answered before one table existed (docs/api.md):
a wrong request is a 400, as FastAPI's own validation errors are here (serving/app.py).
"""

from __future__ import annotations

from enum import StrEnum

from acestep.checkpoints.slots import UnknownModel
from acestep.errors import JobError, JobErrorKind
from acestep.jobs.waits import CommandTimeout
from acestep.lora.catalog import LoraNotFound
from acestep.lora.selection import DefaultFull
from acestep.worker.dispatcher import BusyError


class RefusalCause(StrEnum):
    """Causes a job is refused before it runs that are not a :class:`JobErrorKind`."""

    LM_MISSING = "lm_missing"  # the request needs the 5 Hz LM and this server has none
    QUEUE_FULL = "queue_full"  # come back later (Retry-After)
    UNAVAILABLE = "unavailable"  # the queue's store (Redis) does not answer (Retry-After)
    TIMEOUT = "timeout"  # a synchronous route waited its limit; the job was cancelled
    CALLER_GONE = "caller_gone"  # the client left; the job was cancelled
    UNAUTHORIZED = "unauthorized"  # an API key is configured and the request has none, or a wrong one
    FORBIDDEN = "forbidden"  # a server path outside the folders clients may name
    NOT_FOUND = "not_found"  # an unknown task id, adapter or result file
    CONFLICT = "conflict"  # the server's state refuses it now: busy, default adapters full or none set
    TOO_LARGE = "too_large"  # an upload or a body over its size limit
    UNSUPPORTED_MEDIA = "unsupported_media"  # a body or upload this server does not read (not audio, ...)
    COMMAND_TIMEOUT = "command_timeout"  # a model/LoRA command outwaited its limit, or the worker failed it
    MISDIRECTED = "misdirected"  # a Host name this key-less server does not answer to
    STALLED = "stalled"  # a request body that stopped arriving, or took too long
    THROTTLED = "throttled"  # too many failed keys or logins from one address (Retry-After)
    UPLOADS_BUSY = "uploads_busy"  # every upload slot is taken (Retry-After)
    UNKNOWN_MODEL = "unknown_model"  # a model this server does not serve (the message lists those it does)


FAILURE_STATUS: dict[str, int] = {
    JobErrorKind.INPUT: 400,
    JobErrorKind.LIMIT: 400,  # above this GPU's limits: the request must change, like a wrong one
    JobErrorKind.GENERATION: 422,  # understood, but the model made nothing usable of it
    JobErrorKind.CANCELLED: 409,
    JobErrorKind.OOM: 507,
    JobErrorKind.DISK: 507,
    JobErrorKind.CRASH: 500,
    JobErrorKind.INTERNAL: 500,
    RefusalCause.LM_MISSING: 400,  # the request asks for what is not configured (upstream: 503)
    RefusalCause.QUEUE_FULL: 429,
    RefusalCause.UNAVAILABLE: 503,
    RefusalCause.TIMEOUT: 504,
    RefusalCause.CALLER_GONE: 499,  # nginx's "client closed request": nobody reads it
    RefusalCause.UNAUTHORIZED: 401,
    RefusalCause.FORBIDDEN: 403,
    RefusalCause.NOT_FOUND: 404,
    RefusalCause.CONFLICT: 409,
    RefusalCause.TOO_LARGE: 413,
    RefusalCause.UNSUPPORTED_MEDIA: 415,
    RefusalCause.COMMAND_TIMEOUT: 503,  # no Retry-After: when the running job ends is unknown
    RefusalCause.MISDIRECTED: 421,
    RefusalCause.STALLED: 408,
    RefusalCause.THROTTLED: 429,
    RefusalCause.UPLOADS_BUSY: 503,
    RefusalCause.UNKNOWN_MODEL: 400,  # upstream silently runs its default model (patches/0038)
}


def status_of(cause: str | None) -> int:
    """The HTTP status of a cause; 500 for one the table does not know (a defect)."""
    return FAILURE_STATUS.get(cause or JobErrorKind.INTERNAL, 500)


class Refusal(Exception):
    """A job refused (nothing queued, its uploads deleted) or one that ended without a result.
    ``reason`` is the one message every face shows; ``status`` the REST answer; ``retry_after``
    seconds for the causes a client should simply retry."""

    def __init__(self, cause: str, reason: str, retry_after: int | None = None):
        super().__init__(reason)
        self.cause, self.reason, self.retry_after = cause, reason, retry_after

    @property
    def status(self) -> int:
        return status_of(self.cause)

    @property
    def headers(self) -> dict[str, str] | None:
        return None if self.retry_after is None else {"Retry-After": str(self.retry_after)}


def command_refusal(exc: Exception) -> Refusal:
    """The refusal of a worker command (model load/unload, LoRA load/unload/scale) that raised
    ``exc``: one mapping for REST, UI and MCP, the reason always ``str(exc)``."""
    if isinstance(exc, UnknownModel):
        cause = RefusalCause.UNKNOWN_MODEL
    elif isinstance(exc, LoraNotFound):
        cause = RefusalCause.NOT_FOUND
    elif isinstance(exc, (DefaultFull, BusyError)):
        cause = RefusalCause.CONFLICT
    elif isinstance(exc, (JobError, CommandTimeout)):
        cause = RefusalCause.COMMAND_TIMEOUT
    else:  # LoraError, ValueError: the command asked for something wrong
        cause = JobErrorKind.INPUT
    return Refusal(cause, str(exc))


def lm_missing_reason(features: list[str], missing: str, lm_only: bool = False) -> str:
    """Why a request that needs the LM is refused here: what needed it and how to get one.
    "LLM not initialized" is upstream's wording, which clients may look for."""
    what = ", ".join(features) or "this request"
    verb = "needs" if len(features) <= 1 else "need"
    reason = (
        f"{what} {verb} the 5Hz LM (LLM not initialized). "
        f"The 5 Hz LM is not available on this server: {missing}"
    )
    if lm_only:
        return reason
    return f"{reason}; or leave {'it' if len(features) <= 1 else 'them'} out to generate with the DiT alone"


def failure_reason(job) -> str:
    """The message of a job that ran and failed (the same text on every face)."""
    return f"the job failed: {job.error}"
