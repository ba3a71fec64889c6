"""Cluster settings: ``ACESTEP_QUEUE_URL`` and the timings every server and worker must agree on."""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from acestep import settings

URL_SCHEMES = ("redis://", "rediss://", "unix://")
# A job whose worker stopped is started again once; the next stop fails it with the reason.
MAX_STARTS = 2


class ClusterConfigError(ValueError):
    """A cluster setting that cannot work (a clear message for the operator)."""


@dataclass(frozen=True)
class ClusterSettings:
    url: str
    namespace: str = settings.value({}, "ACESTEP_QUEUE_NAMESPACE")
    # A worker silent for this long is dead: its unacknowledged job goes back to the queue.
    heartbeat_timeout_s: int = settings.value({}, "ACESTEP_WORKER_HEARTBEAT_TIMEOUT")
    # How long a stopping worker lets its running job finish before it exits.
    stop_timeout_s: int = settings.value({}, "ACESTEP_WORKER_STOP_TIMEOUT")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, url: str | None = None) -> ClusterSettings | None:
        """None when no queue URL is configured (the embedded queue serves)."""
        env = settings.current() if env is None else env
        url = (url or env.get("ACESTEP_QUEUE_URL") or "").strip()
        if not url:
            return None
        if not url.startswith(URL_SCHEMES):
            raise ClusterConfigError(
                f"ACESTEP_QUEUE_URL must be a Redis URL ({', '.join(URL_SCHEMES)}), got {url!r}"
            )
        namespace = settings.value(env, "ACESTEP_QUEUE_NAMESPACE")
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", namespace):
            raise ClusterConfigError(
                f"ACESTEP_QUEUE_NAMESPACE must be letters, digits, _.- ; got {namespace!r}"
            )
        heartbeat = settings.value(env, "ACESTEP_WORKER_HEARTBEAT_TIMEOUT")
        stop = settings.value(env, "ACESTEP_WORKER_STOP_TIMEOUT")
        return cls(url=url, namespace=namespace, heartbeat_timeout_s=heartbeat, stop_timeout_s=stop)

    @property
    def heartbeat_interval_s(self) -> float:
        """How often a worker refreshes its liveness key (several beats per timeout)."""
        return max(0.5, min(5.0, self.heartbeat_timeout_s / 4))


def redacted(url: str) -> str:
    """The URL without its password, for logs and status pages."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def default_worker_name(gpu: str | None) -> str:
    """``<host>-gpu<N>``; the worker adds a random part of its own, unique per process."""
    return f"{socket.gethostname()}-gpu{gpu if gpu not in (None, '') else 'cpu'}"
