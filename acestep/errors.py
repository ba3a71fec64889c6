"""How a job fails, in words every layer shares: ``JobError`` and its kinds.

A kind decides the HTTP status a face answers with (``acestep.jobs.failures``) and what the worker
does next (a crash restarts the worker process; an out-of-memory error releases memory first).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

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


# pydantic's validation errors, as every face words them: "where: message", joined by "; ".
# (Duck-typed: ``errors()`` is pydantic's list of dicts; this module imports no library.)
def error_message(error: Mapping[str, Any]) -> str:
    """One pydantic error's message, without the "Value error, " pydantic puts before our own."""
    return str(error["msg"]).removeprefix("Value error, ")


def validation_lines(errors: Iterable[Mapping[str, Any]]) -> list[str]:
    """Each error as ``field.path: message`` (``request`` where the whole request is wrong)."""
    return [f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {error_message(e)}" for e in errors]


def validation_message(exc: Any) -> str:
    """A ``ValidationError`` (or FastAPI's ``RequestValidationError``) as one line."""
    return "; ".join(validation_lines(exc.errors()))
