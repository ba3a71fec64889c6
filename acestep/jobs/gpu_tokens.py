"""Optional client for the shared GPU token queue ("gpu-queue-service") some deployments run beside acestep.

The service (Go + Redis, usually port 8085) hands out a weighted budget of "tokens" so several GPU
services on one host do not run at once. Its source is not available: the API used here is
reconstructed from three of its callers and is unverified:

- ``POST /tasks`` ``{session_id, task_type, data (a JSON string), tokens}`` ->
  ``{status: queued|processing|ready, queue_status: {...}}``
- ``GET /tasks/{session_id}`` -> ``{status, position}``
- ``POST /task/status`` ``{session_id, status: processing|completed|failed}``

The feature is off unless ``ACESTEP_GPU_QUEUE_URL`` is set. This module must stay torch-free: the
server process imports it.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from loguru import logger

from acestep.settings import FALSE_WORDS, TRUE_WORDS
from acestep.settings import current as current_settings
from acestep.settings import value as setting_value
from acestep.worker.dispatcher import GuardError

# Statuses meaning "the claim is granted": `ready` still has to be marked started, `processing` already is.
_GRANTED = frozenset({"processing", "ready"})
# Statuses meaning the queue dropped the session; waiting longer would never grant it.
_DROPPED = frozenset({"completed", "failed", "cancelled", "canceled", "error", "expired"})
_REQUEST_TIMEOUT_S = 10.0
# One failed poll is a blip; this many in a row means the queue went away while we waited.
_MAX_POLL_ERRORS = 3


class GpuTokenError(GuardError):
    """The GPU token queue could not be reached, refused or dropped the claim, or did not grant it in time."""


class _Unavailable(Exception):
    """Internal: the queue did not answer (transport error or 5xx); fail_open decides what happens."""


def _env_seconds(env: Mapping[str, str], name: str, default: float) -> float:
    value = (env.get(name) or "").strip()
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {value!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return number


def _env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = (env.get(name) or "").strip().lower()
    if not value:
        return default
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise ValueError(f"{name} must be one of 1/0, true/false, yes/no, on/off, got {value!r}")


@dataclass(frozen=True)
class GpuTokenSettings:
    url: str  # ACESTEP_GPU_QUEUE_URL, e.g. http://127.0.0.1:8085 ; unset = feature off
    # ACESTEP_GPU_QUEUE_TOKENS: the claim per job (the ACE wrappers sent 1000).
    tokens: int = setting_value({}, "ACESTEP_GPU_QUEUE_TOKENS")
    task_type: str = "acestep"
    poll_s: float = 0.5
    # ACESTEP_GPU_QUEUE_TIMEOUT: how long to wait for the claim to be granted.
    timeout_s: float = setting_value({}, "ACESTEP_GPU_QUEUE_TIMEOUT")
    # ACESTEP_GPU_QUEUE_FAIL_OPEN: run without tokens when the queue is unreachable.
    fail_open: bool = setting_value({}, "ACESTEP_GPU_QUEUE_FAIL_OPEN")

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"GPU queue URL must start with http:// or https://, got {self.url!r}")
        if self.tokens < 1:
            raise ValueError(f"GPU queue tokens must be at least 1, got {self.tokens}")
        if not (self.poll_s > 0 and self.timeout_s > 0):
            raise ValueError("GPU queue poll_s and timeout_s must be positive")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GpuTokenSettings | None:
        """Settings from ``ACESTEP_GPU_QUEUE_*``; None (feature off) when the URL is unset or empty."""
        env = current_settings() if env is None else env
        url = (env.get("ACESTEP_GPU_QUEUE_URL") or "").strip().rstrip("/")
        if not url:
            return None
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"ACESTEP_GPU_QUEUE_URL must start with http:// or https://, got {url!r}")
        return cls(
            url=url,
            tokens=setting_value(env, "ACESTEP_GPU_QUEUE_TOKENS"),
            timeout_s=_env_seconds(env, "ACESTEP_GPU_QUEUE_TIMEOUT", cls.timeout_s),
            fail_open=_env_bool(env, "ACESTEP_GPU_QUEUE_FAIL_OPEN", cls.fail_open),
        )


def _status(answer: dict[str, Any]) -> str | None:
    status = answer.get("status")
    return status.strip().lower() if isinstance(status, str) else None


class GpuTokenClient:
    """Holds a GPU token claim around a block of GPU work; see :meth:`hold`."""

    def __init__(self, settings: GpuTokenSettings, client: httpx.Client | None = None):
        self.settings = settings
        self._base = settings.url.rstrip("/")
        self._owns_client = client is None
        # trust_env=False: the queue runs beside us; an HTTP(S)_PROXY meant for the internet must not
        # catch it.
        self._client = client or httpx.Client(timeout=_REQUEST_TIMEOUT_S, trust_env=False)

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    @contextlib.contextmanager
    def hold(self, job_id: str, data: dict | None = None) -> Iterator[None]:
        """Acquire the claim for ``job_id`` before the block; release it (completed/failed) after.

        Raises :class:`GpuTokenError` when the queue is unreachable (unless ``fail_open``), rejects or
        drops the claim, or does not grant it within ``timeout_s``. A failed release is only logged, so
        the block's own outcome (its result or its exception) is never replaced.
        """
        session_id = f"acestep-{job_id}"
        registered = self._acquire(session_id, data)
        outcome = "failed"
        try:
            yield
            outcome = "completed"
        finally:
            if registered:
                self._release(session_id, outcome)

    # -- acquisition -------------------------------------------------------------------------

    def _acquire(self, session_id: str, data: dict | None) -> bool:
        """Wait for the grant; True when a session exists on the queue that must be released later."""
        body = {
            "session_id": session_id,
            "task_type": self.settings.task_type,
            "data": json.dumps(data or {}),  # the service takes `data` as a JSON *string*
            "tokens": self.settings.tokens,
        }
        try:
            answer = self._call("POST", "/tasks", body)
        except _Unavailable as exc:
            self._unreachable(session_id, exc)
            return False  # fail-open pass-through: nothing was registered, nothing to release
        try:
            status = _status(answer)
            # The ACE wrappers took any 200/201 as acquired and ran while still queued; wait for the grant.
            if status not in _GRANTED:
                status = self._wait(session_id)
            if status == "ready":
                self._mark_started(session_id)
        except _Unavailable as exc:
            # Best effort: a queue that comes back must not keep our claim.
            self._release(session_id, "failed")
            self._unreachable(session_id, exc)
        except BaseException:
            # Timeout, dropped session, Ctrl-C: the queued claim would otherwise leak its tokens.
            self._release(session_id, "failed")
            raise
        return True

    def _wait(self, session_id: str) -> str:
        path = f"/tasks/{quote(session_id, safe='')}"
        deadline = time.monotonic() + self.settings.timeout_s
        status: str | None = None
        position: Any = None
        errors = 0
        while True:
            time.sleep(max(0.0, min(self.settings.poll_s, deadline - time.monotonic())))
            try:
                answer = self._call("GET", path)
            except _Unavailable:
                errors += 1
                if errors >= _MAX_POLL_ERRORS:
                    raise
            else:
                errors = 0
                status, position = _status(answer), answer.get("position")
                if status in _GRANTED:
                    return status
                if status in _DROPPED:
                    raise GpuTokenError(
                        f"GPU token queue at {self._base} dropped session {session_id} (status {status!r})"
                    )
            if time.monotonic() >= deadline:
                raise GpuTokenError(
                    f"timed out after {self.settings.timeout_s:g} s waiting for {self.settings.tokens} GPU "
                    f"tokens from the queue at {self._base} (session {session_id}, last status {status!r}, "
                    f"position {position!r}); raise ACESTEP_GPU_QUEUE_TIMEOUT or retry later"
                )

    def _mark_started(self, session_id: str) -> None:
        # The grant is already ours; a failed "started" mark is not worth failing the job over.
        try:
            self._call("POST", "/task/status", {"session_id": session_id, "status": "processing"})
        except Exception as exc:
            logger.warning(f"GPU token queue: could not mark {session_id} as processing: {exc}")

    def _unreachable(self, session_id: str, exc: _Unavailable) -> None:
        if not self.settings.fail_open:
            raise GpuTokenError(
                f"GPU token queue at {self._base} is unreachable ({exc}); refusing to run {session_id} "
                "without GPU tokens (set ACESTEP_GPU_QUEUE_FAIL_OPEN=1 to run without the queue)"
            ) from None
        logger.warning(f"GPU token queue at {self._base} is unreachable ({exc}); running {session_id} anyway")

    # -- release and transport ---------------------------------------------------------------

    def _release(self, session_id: str, outcome: str) -> None:
        try:
            self._call("POST", "/task/status", {"session_id": session_id, "status": outcome})
        except Exception as exc:  # never raised: it would hide the job's own result or exception
            logger.error(f"GPU token queue: could not release {session_id} as {outcome}: {exc}")

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = f"{self._base}{path}"
        try:
            response = self._client.request(method, url, json=body)
        except httpx.HTTPError as exc:
            raise _Unavailable(f"{method} {url} failed: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 500:
            raise _Unavailable(f"{method} {url} answered HTTP {response.status_code}")
        if response.status_code >= 400:
            raise GpuTokenError(
                f"GPU token queue at {self._base} rejected {method} {path}: "
                f"HTTP {response.status_code} {response.text[:200]}"
            )
        try:
            answer = response.json()
        except ValueError:
            return {}  # an empty or non-JSON 2xx: no status, so acquisition falls back to polling
        return answer if isinstance(answer, dict) else {}


def install_gpu_tokens(dispatcher) -> GpuTokenClient | None:
    """Hold tokens of the shared GPU queue around each job when ``ACESTEP_GPU_QUEUE_URL`` is set
    (a single server's dispatcher, or each cluster worker's)."""
    tokens = GpuTokenSettings.from_env()
    if not tokens:
        return None
    client = GpuTokenClient(tokens)
    dispatcher.job_guard = lambda job: client.hold(job.id, {"task_type": job.request.task_type})
    logger.info(f"GPU token queue: {tokens.url} ({tokens.tokens} tokens a job)")
    return client
