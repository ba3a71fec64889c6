"""Real cluster parts for tests: ``acestep-worker`` processes and API servers on one Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from _server import Server, stop_process

from acestep.testing import make_tiny_checkpoint

TURBO, BASE = "acestep-v15-turbo", "acestep-v15-base"
HEARTBEAT_S = 3  # short, so a killed worker's job is moved on within seconds


def two_model_checkpoint(root: Path) -> Path:
    """One upstream root with the tiny turbo and base DiTs (shared VAE and text encoder)."""
    make_tiny_checkpoint(root, variant="turbo")
    make_tiny_checkpoint(root, variant="base")
    return root


def cluster_env(redis_url: str, workdir: Path) -> dict[str, str]:
    """What every process of one cluster shares: the queue and the results and uploads folders."""
    return {
        "ACESTEP_QUEUE_URL": redis_url,
        "ACESTEP_TMPDIR": str(workdir / "shared"),
        "ACESTEP_WORKER_HEARTBEAT_TIMEOUT": str(HEARTBEAT_S),
        "ACESTEP_WORKER_STOP_TIMEOUT": "20",
        "ACESTEP_DEVICE": "cpu",
        "ACESTEP_KEEP_ALIVE": "-1",
        "ACESTEP_WORKER": "inprocess",
        "OMP_NUM_THREADS": "1",
        "NO_PROXY": "127.0.0.1,localhost",
    }


class Worker:
    """One ``acestep-worker`` process; ``kill()`` is kill -9. Its id in Redis is ``<name>-<6 hex>``."""

    def __init__(self, env: dict[str, str], workdir: Path, name: str, *args: str, **extra_env: str):
        self.name = name
        self.log = workdir / f"worker-{name}.log"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from acestep.cli import worker_main; raise SystemExit(worker_main())",
                "--name",
                name,
                *args,
            ],
            env=os.environ | env | extra_env,
            stdout=self.log.open("a"),
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            stop_process(self.proc)

    def logs(self) -> str:
        return self.log.read_text()[-3000:]


def wait_for_workers(server: Server, names: set[str], timeout: float = 180) -> None:
    """Until every named worker is alive and has its model loaded (``/v1/stats``)."""
    deadline = time.monotonic() + timeout
    while True:
        workers = server.get("/v1/stats").json()["data"]["workers"]
        ready = {w["name"] for w in workers if w["alive"] and w["state"] == "ready"}
        if names <= ready:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"workers not ready: {names - ready}; seen {workers}")
        time.sleep(0.3)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def query_many(server: Server, ids: list[str]) -> list[dict]:
    response = server.post("/query_result", json={"task_id_list": ids})
    assert response.status_code == 200, response.text
    return response.json()["data"]


def get_ok(client: httpx.Client, url: str) -> bytes:
    response = client.get(url)
    assert response.status_code == 200, (url, response.text)
    return response.content


@contextmanager
def two_servers(
    env: dict[str, str], root: Path, checkpoint: Path, workers: dict[str, str]
) -> Iterator[tuple[list[Server], list[Worker]]]:
    """API servers ``api-a`` and ``api-b`` (default model turbo) and one worker per entry of
    ``workers`` (name -> DiT folder, on GPUs 0, 1, ...), all ready; stopped afterwards."""
    started = [
        Worker(env, root, name, "--dit", dit, "--gpu", str(gpu))
        for gpu, (name, dit) in enumerate(workers.items())
    ]
    servers: list[Server] = []
    try:
        for name in ("api-a", "api-b"):
            (root / name).mkdir()
            servers.append(Server(checkpoint, root / name, dit=TURBO, **env))
        wait_for_workers(servers[0], set(workers))
        yield servers, started
    finally:
        for part in [*servers, *started]:
            part.stop()
