"""The dispatcher's words for commands and waits: its refusals, and how long a caller waits
(``WaitScope``, set by the faces as a context variable)."""

from __future__ import annotations

from concurrent.futures import Future
from contextvars import ContextVar
from dataclasses import dataclass


class GuardError(RuntimeError):
    """A job guard refused to let the job run (the job fails with this message)."""


class BusyError(RuntimeError):
    """An unload was asked for while a job runs, and the server refuses rather than waits."""


class CommandTimeout(TimeoutError):
    """A load, unload or LoRA command was still waiting for the running job when its caller's
    patience ran out (or the caller went away); the message says whether it was withdrawn."""


@dataclass(frozen=True)
class WaitScope:
    """How long a caller waits for its commands: until ``deadline`` (``time.monotonic()``) or
    until ``gone`` completes (the caller went away), whichever comes first."""

    deadline: float
    gone: Future


# Set by the faces around a blocking command (``acestep.jobs.waits``); a context variable, so
# the layers in between (the LoRA selection, the memory manager) need not pass it on.
WAIT_SCOPE: ContextVar[WaitScope | None] = ContextVar("acestep_wait_scope", default=None)


__all__ = ["WAIT_SCOPE", "BusyError", "CommandTimeout", "GuardError", "WaitScope"]
