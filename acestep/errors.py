"""How a job fails, in words every layer shares: ``JobError`` and its kinds.

A kind decides the HTTP status a face answers with (``acestep.jobs.failures``) and what the worker
does next (a crash restarts the worker process; an out-of-memory error releases memory first).
"""

from __future__ import annotations

from enum import StrEnum

SHOWN_CHARS = 80  # how much of a refused value an error message quotes


class JobErrorKind(StrEnum):
    """Why a job failed. A ``StrEnum``: its values are the strings the wire format carries."""

    INPUT = "input"  # the request is wrong: fix it and send it again
    LIMIT = "limit"  # the request is above this GPU's limits
    GENERATION = "generation"  # the model produced NaN, silence or nothing
    OOM = "oom"  # the GPU ran out of memory; the job released what it held
    DISK = "disk"  # no space left to write the result
    CRASH = "crash"  # the worker process died
    CANCELLED = "cancelled"
    INTERNAL = "internal"  # anything else: a defect, logged with its traceback


class JobError(RuntimeError):
    """A job that failed, with its :class:`JobErrorKind`."""

    def __init__(self, kind: JobErrorKind | str, message: str):
        super().__init__(message)
        self.kind = JobErrorKind(kind)


def shown(value: object) -> str:
    """A value's repr for an error message, clipped: a refusal never echoes a huge input."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[: SHOWN_CHARS - 1]}… ({len(text)} characters)"
