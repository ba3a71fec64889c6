"""GpuTokenClient against a real stand-in of the reconstructed gpu-queue-service on 127.0.0.1.

The stand-in keeps a token pool with a FIFO of sessions, answers ``queued`` while the pool is short,
moves the head to ``ready`` (or ``processing``) when tokens free up, and records every call.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from loguru import logger

from acestep.jobs.gpu_tokens import GpuTokenClient, GpuTokenError, GpuTokenSettings


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StandInQueue:
    """The reconstructed API over an in-memory token pool."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()
        self.app = self._build()

    def reset(self, capacity: int = 2000, grant_status: str = "ready", grant_on_submit: bool = True) -> None:
        self.capacity = capacity
        self.free = capacity
        self.grant_status = grant_status  # what a granted session becomes: "ready" or "processing"
        self.grant_on_submit = grant_on_submit  # False: POST /tasks always answers queued, grants on a poll
        self.fail_release = False  # True: POST /task/status completed|failed answers 500
        self.fail_polls = False  # True: GET /tasks/{id} answers 500 (the queue broke while we wait)
        self.fifo: list[str] = []
        self.tasks: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str, dict[str, Any] | None]] = []

    def _advance(self) -> None:
        while self.fifo and self.tasks[self.fifo[0]]["tokens"] <= self.free:
            task = self.tasks[self.fifo.pop(0)]
            self.free -= task["tokens"]
            task["status"] = self.grant_status

    def _queue_status(self) -> dict[str, Any]:
        active = sum(t["status"] in ("ready", "processing") for t in self.tasks.values())
        return {
            "status": "ok",
            "queued_tasks": len(self.fifo),
            "active_tasks": active,
            "estimated_wait_seconds": 1,
        }

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.post("/tasks", status_code=201)
        async def submit(request: Request) -> dict[str, Any]:
            body = await request.json()
            with self.lock:
                self.calls.append(("POST", "/tasks", body))
                tokens = int(body.get("tokens", 1000))
                if tokens > self.capacity:
                    raise HTTPException(400, "claim exceeds the pool")
                self.tasks[body["session_id"]] = {
                    "status": "queued",
                    "tokens": tokens,
                    "data": body.get("data"),
                }
                self.fifo.append(body["session_id"])
                if self.grant_on_submit:
                    self._advance()
                status = self.tasks[body["session_id"]]["status"]
                return {"status": status, "queue_status": self._queue_status()}

        @app.get("/tasks/{session_id}")
        async def poll(session_id: str) -> dict[str, Any]:
            with self.lock:
                self.calls.append(("GET", f"/tasks/{session_id}", None))
                if self.fail_polls:
                    raise HTTPException(500, "redis down")
                if session_id not in self.tasks:
                    raise HTTPException(404, "unknown session")
                self._advance()
                position = self.fifo.index(session_id) + 1 if session_id in self.fifo else 0
                return {"status": self.tasks[session_id]["status"], "position": position}

        @app.post("/task/status")
        async def status(request: Request) -> dict[str, Any]:
            body = await request.json()
            with self.lock:
                self.calls.append(("POST", "/task/status", body))
                task = self.tasks.get(body["session_id"])
                if task is None:
                    raise HTTPException(404, "unknown session")
                new = body["status"]
                if new in ("completed", "failed"):
                    if self.fail_release:
                        raise HTTPException(500, "redis down")
                    if task["status"] in ("ready", "processing"):
                        self.free += task["tokens"]  # the claim returns to the pool
                    elif body["session_id"] in self.fifo:
                        self.fifo.remove(body["session_id"])
                    task["status"] = new
                    self._advance()
                elif new == "processing" and task["status"] == "ready":
                    task["status"] = "processing"
                return {"ok": True}

        return app

    def sequence(self) -> list[str]:
        """Calls as compact strings: POST /tasks, GET, status:<value>."""
        with self.lock:
            out = []
            for method, path, body in self.calls:
                if path == "/task/status":
                    out.append(f"status:{body['status']}" if body else "status")
                else:
                    out.append("GET" if method == "GET" else "POST /tasks")
            return out


@pytest.fixture(scope="module")
def service() -> Iterator[tuple[StandInQueue, str]]:
    queue = StandInQueue()
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(queue.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "stand-in queue did not start"
        time.sleep(0.01)
    yield queue, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(5)


@pytest.fixture
def queue(service: tuple[StandInQueue, str]) -> StandInQueue:
    service[0].reset()
    return service[0]


@pytest.fixture
def url(service: tuple[StandInQueue, str]) -> str:
    return service[1]


def _client(url: str, **overrides: Any) -> GpuTokenClient:
    settings = dict(url=url, poll_s=0.02, timeout_s=2.0) | overrides
    return GpuTokenClient(GpuTokenSettings(**settings))


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="WARNING")
    yield lines
    logger.remove(sink)


@pytest.mark.parametrize(
    ("grant_status", "grant_on_submit", "expected"),
    [
        ("ready", True, ["POST /tasks", "status:processing", "status:completed"]),
        ("processing", True, ["POST /tasks", "status:completed"]),
        ("ready", False, ["POST /tasks", "GET", "status:processing", "status:completed"]),
    ],
)
def test_hold_acquires_and_releases_completed(
    queue: StandInQueue, url: str, grant_status: str, grant_on_submit: bool, expected: list[str]
) -> None:
    queue.reset(grant_status=grant_status, grant_on_submit=grant_on_submit)
    client = _client(url, tokens=1000)
    with client.hold("job1", {"prompt": "lofi"}):
        assert queue.free == 1000  # our claim is held inside the block
        assert queue.tasks["acestep-job1"]["status"] == "processing"
    assert queue.free == 2000
    assert queue.tasks["acestep-job1"]["status"] == "completed"
    assert queue.sequence() == expected
    submitted = queue.calls[0][2]
    assert submitted is not None
    assert submitted["session_id"] == "acestep-job1"
    assert submitted["task_type"] == "acestep"
    assert submitted["tokens"] == 1000
    assert isinstance(submitted["data"], str) and json.loads(submitted["data"]) == {"prompt": "lofi"}


def test_exception_in_block_releases_failed_and_reraises(queue: StandInQueue, url: str) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom, match="cuda oom"):
        with _client(url).hold("job2"):
            raise Boom("cuda oom")
    assert queue.sequence() == ["POST /tasks", "status:processing", "status:failed"]
    assert queue.free == 2000


def test_second_holder_waits_for_first(queue: StandInQueue, url: str) -> None:
    queue.reset(capacity=1000)
    first_in = threading.Event()
    times: dict[str, float] = {}
    errors: list[BaseException] = []

    def first() -> None:
        try:
            with _client(url, tokens=1000).hold("a"):
                first_in.set()
                time.sleep(0.3)
                times["a_exit"] = time.monotonic()
        except BaseException as exc:  # surfaced below: a thread's exception would otherwise be lost
            errors.append(exc)
            first_in.set()

    def second() -> None:
        try:
            with _client(url, tokens=1000).hold("b"):
                times["b_enter"] = time.monotonic()
        except BaseException as exc:
            errors.append(exc)

    t1 = threading.Thread(target=first)
    t1.start()
    assert first_in.wait(5)
    t2 = threading.Thread(target=second)
    t2.start()
    t1.join(5)
    t2.join(5)
    assert not errors
    assert times["b_enter"] > times["a_exit"]
    polls_for_b = [c for c in queue.calls if c[:2] == ("GET", "/tasks/acestep-b")]
    assert len(polls_for_b) >= 2  # it was told `queued` and kept waiting
    assert queue.free == 1000


def test_unreachable_queue_fails_closed_with_url() -> None:
    dead = f"http://127.0.0.1:{_free_port()}"
    ran = False
    with pytest.raises(GpuTokenError, match="unreachable") as info:
        with _client(dead).hold("job3"):
            ran = True
    assert dead in str(info.value)
    assert "ACESTEP_GPU_QUEUE_FAIL_OPEN" in str(info.value)
    assert not ran


def test_unreachable_queue_fail_open_passes_through(log_lines: list[str]) -> None:
    dead = f"http://127.0.0.1:{_free_port()}"
    ran = False
    with _client(dead, fail_open=True).hold("job4"):
        ran = True
    assert ran
    assert any("unreachable" in line and dead in line for line in log_lines)


def test_timeout_raises_and_releases_queued_session(queue: StandInQueue, url: str) -> None:
    queue.reset(capacity=1000)
    with _client(url, tokens=1000).hold("holder"):
        started = time.monotonic()
        with pytest.raises(GpuTokenError, match="timed out"):
            with _client(url, tokens=1000, timeout_s=0.3).hold("late"):
                pytest.fail("entered without tokens")
        assert 0.25 < time.monotonic() - started < 2.0
        assert queue.tasks["acestep-late"]["status"] == "failed"
        assert "acestep-late" not in queue.fifo  # no leaked claim waiting to take the pool later
    assert queue.free == 1000
    assert queue.tasks["acestep-holder"]["status"] == "completed"


def test_queue_breaking_mid_wait_fails_and_releases(queue: StandInQueue, url: str) -> None:
    queue.reset(grant_on_submit=False)
    queue.fail_polls = True
    with pytest.raises(GpuTokenError, match="unreachable") as info:
        with _client(url).hold("job8"):
            pytest.fail("entered without tokens")
    assert url in str(info.value)
    assert queue.sequence() == ["POST /tasks", "GET", "GET", "GET", "status:failed"]
    assert "acestep-job8" not in queue.fifo


def test_rejected_claim_raises_even_fail_open(queue: StandInQueue, url: str) -> None:
    with pytest.raises(GpuTokenError, match="rejected POST /tasks: HTTP 400"):
        with _client(url, tokens=5000, fail_open=True).hold("huge"):
            pytest.fail("entered a rejected claim")


def test_release_failure_is_logged_not_raised(queue: StandInQueue, url: str, log_lines: list[str]) -> None:
    queue.fail_release = True
    with _client(url).hold("job5"):
        pass  # the job itself succeeded; a broken release must not turn it into a failure
    with pytest.raises(ValueError, match="job's own error"):
        with _client(url).hold("job6"):
            raise ValueError("job's own error")
    assert any("could not release acestep-job5 as completed" in line for line in log_lines)
    assert any("could not release acestep-job6 as failed" in line for line in log_lines)


def test_injected_client_is_used(queue: StandInQueue, url: str) -> None:
    with httpx.Client(trust_env=False) as http:
        with GpuTokenClient(GpuTokenSettings(url=url, poll_s=0.02), client=http).hold("job7"):
            pass
        assert not http.is_closed
    assert queue.sequence()[-1] == "status:completed"


def test_from_env() -> None:
    assert GpuTokenSettings.from_env({}) is None
    assert GpuTokenSettings.from_env({"ACESTEP_GPU_QUEUE_URL": "  "}) is None
    defaults = GpuTokenSettings.from_env({"ACESTEP_GPU_QUEUE_URL": "http://127.0.0.1:8085/"})
    assert defaults == GpuTokenSettings(url="http://127.0.0.1:8085")
    assert defaults.tokens == 1000 and defaults.timeout_s == 600.0 and defaults.fail_open is False
    parsed = GpuTokenSettings.from_env(
        {
            "ACESTEP_GPU_QUEUE_URL": "http://queue:8085",
            "ACESTEP_GPU_QUEUE_TOKENS": "1500",
            "ACESTEP_GPU_QUEUE_TIMEOUT": "30.5",
            "ACESTEP_GPU_QUEUE_FAIL_OPEN": "yes",
        }
    )
    assert parsed is not None
    assert parsed == GpuTokenSettings(url="http://queue:8085", tokens=1500, timeout_s=30.5, fail_open=True)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ACESTEP_GPU_QUEUE_TOKENS", "lots"),
        ("ACESTEP_GPU_QUEUE_TOKENS", "0"),
        ("ACESTEP_GPU_QUEUE_TIMEOUT", "soon"),
        ("ACESTEP_GPU_QUEUE_TIMEOUT", "-1"),
        ("ACESTEP_GPU_QUEUE_TIMEOUT", "nan"),
        ("ACESTEP_GPU_QUEUE_FAIL_OPEN", "maybe"),
        ("ACESTEP_GPU_QUEUE_URL", "127.0.0.1:8085"),
    ],
)
def test_from_env_rejects_bad_values_naming_the_variable(name: str, value: str) -> None:
    env = {"ACESTEP_GPU_QUEUE_URL": "http://127.0.0.1:8085", name: value}
    with pytest.raises(ValueError, match=name):
        GpuTokenSettings.from_env(env)


def test_module_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, acestep.jobs.gpu_tokens; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
