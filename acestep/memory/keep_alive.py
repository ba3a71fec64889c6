"""Keep-alive policy: how long loaded models stay after the last job before they are unloaded.

The duration grammar is ``acestep.tasks.parse_keep_alive``. The server sets a default; a request
may carry its own unless the operator forbids it. Time comes from an injected clock so the policy
is testable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from acestep.settings import current as current_settings
from acestep.settings import value as setting_value
from acestep.tasks import NEVER, UNLOAD_LEVELS, KeepAliveError, parse_keep_alive


def describe(seconds: float) -> str:
    if seconds == NEVER:
        return "never (-1)"
    if seconds == 0:
        return "after each job (0)"
    return f"{seconds:g} s"


@dataclass(frozen=True)
class KeepAlivePolicy:
    default: float
    allow_override: bool = setting_value({}, "ACESTEP_KEEP_ALIVE_OVERRIDE")
    idle_level: str = setting_value({}, "ACESTEP_IDLE_UNLOAD")  # an expired keep-alive: park or free

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KeepAlivePolicy:
        env = current_settings() if env is None else env
        default = parse_keep_alive(setting_value(env, "ACESTEP_KEEP_ALIVE"))
        allow = setting_value(env, "ACESTEP_KEEP_ALIVE_OVERRIDE")
        level = setting_value(env, "ACESTEP_IDLE_UNLOAD").lower()
        if level not in UNLOAD_LEVELS:
            raise ValueError(f"ACESTEP_IDLE_UNLOAD must be park or free, got {level!r}")
        return cls(default=default, allow_override=allow is not False, idle_level=level)

    def for_request(self, requested: str | float | None) -> float:
        """The keep-alive a job leaves behind: its own when allowed, else the server default."""
        if requested is None or (isinstance(requested, str) and not requested.strip()):
            return self.default
        if not self.allow_override:
            raise KeepAliveError(
                "this server does not accept a per-request keep_alive "
                "(the operator set ACESTEP_KEEP_ALIVE_OVERRIDE=false); leave the field out"
            )
        return parse_keep_alive(requested)

    def as_dict(self) -> dict:
        return {
            "default": describe(self.default),
            "default_seconds": None if self.default == NEVER else self.default,
            "allow_override": self.allow_override,
            "idle_level": self.idle_level,
        }


class IdleTimer:
    """The deadline after which idle models should unload. Not thread-safe: the job queue calls it
    under the same lock that admits work, which is what makes "idle" a fact rather than a guess."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.deadline: float | None = None

    def job_started(self) -> None:
        self.deadline = None

    def job_finished(self, keep_alive: float) -> None:
        self.deadline = None if keep_alive == NEVER else self.clock() + keep_alive

    def disarm(self) -> None:
        self.deadline = None

    def due(self) -> bool:
        return self.deadline is not None and self.clock() >= self.deadline

    def seconds_left(self) -> float | None:
        return None if self.deadline is None else max(self.deadline - self.clock(), 0.0)
