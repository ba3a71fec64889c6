"""A real ``acestep-api`` process on 127.0.0.1 for tests, and a small client for it."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

KEY = "test-key-123"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(
        self,
        checkpoint: Path,
        workdir: Path,
        dit: str = "acestep-v15-base",
        ui: bool = False,
        flags: tuple[str, ...] = (),  # more command-line flags (e.g. the UI's --language)
        **env: str,
    ):
        self.port = free_port()
        self.workdir = workdir
        self.results = workdir / "tmp" / "api_audio"
        self.log = workdir / "server.log"
        environment = (
            os.environ
            | {
                "ACESTEP_CHECKPOINTS_DIR": str(checkpoint),
                "ACESTEP_CONFIG_PATH": dit,
                "ACESTEP_DEVICE": "cpu",
                "ACESTEP_TMPDIR": str(workdir / "tmp"),
                "ACESTEP_KEEP_ALIVE": "-1",
                "ACESTEP_API_KEY": KEY,
                "NO_PROXY": "127.0.0.1,localhost",
                # Many tests send wrong keys on purpose; the throttle has its own tests.
                "ACESTEP_AUTH_FAILURES": "1000",
            }
            | env
        )
        if ui:  # the Gradio UI with the REST API on the same port (`acestep --enable-api`)
            code = "from acestep.cli import main; raise SystemExit(main())"
            args = ["--server-name", "127.0.0.1", "--port", str(self.port), "--enable-api"]
        else:
            code = "from acestep.cli import api_main; raise SystemExit(api_main())"
            args = ["--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, *args, *flags],
            env=environment,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=120, trust_env=False)
        self.auth = {"Authorization": f"Bearer {KEY}"}
        wait_for_health(self.proc, self.port, self.log)

    def post(self, path: str, **kwargs) -> httpx.Response:
        headers = self.auth | kwargs.pop("headers", {})
        return self.client.post(path, headers=headers, **kwargs)

    def get(self, path: str, **kwargs) -> httpx.Response:
        headers = self.auth | kwargs.pop("headers", {})
        return self.client.get(path, headers=headers, **kwargs)

    def release(self, **kwargs) -> str:
        response = self.post("/release_task", **kwargs)
        assert response.status_code == 200, response.text
        return response.json()["data"]["task_id"]

    def query(self, task_id: str) -> dict:
        response = self.post("/query_result", json={"task_id_list": [task_id]})
        assert response.status_code == 200, response.text
        return response.json()["data"][0]

    def wait(self, task_id: str, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            entry = self.query(task_id)
            if entry["status"] != 0:
                entry["items"] = json.loads(entry["result"])
                return entry
            if time.monotonic() > deadline:
                raise AssertionError(f"task {task_id} still running: {entry}")
            time.sleep(0.1)

    def generate(self, body: dict) -> tuple[np.ndarray, dict]:
        """Queue ``body``, wait for success; the first item's audio (float32) and the item."""
        entry = self.wait(self.release(json=body))
        assert entry["status"] == 1, entry
        item = entry["items"][0]
        return sf.read(io.BytesIO(self.download(item["file"])), dtype="float32")[0], item

    def download(self, url: str) -> bytes:
        response = self.get(url)
        assert response.status_code == 200, response.text
        return response.content

    def stop(self) -> float:
        """SIGTERM, then SIGKILL after 60 s; the seconds it took."""
        self.client.close()
        return stop_process(self.proc)


def wait_for_health(proc: subprocess.Popen, port: int, log: Path, timeout: float = 120) -> None:
    """Until GET /health on 127.0.0.1:port answers 200; the log's tail if the process exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}): {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5, trust_env=False).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"no /health on port {port}: {log.read_text()[-3000:]}")
        time.sleep(0.2)


def stop_process(proc: subprocess.Popen) -> float:
    """SIGTERM, then SIGKILL after 60 s; the seconds it took (a healthy idle server: about 1)."""
    start = time.monotonic()
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return time.monotonic() - start
