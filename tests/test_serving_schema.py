"""A schemathesis run against the live server's /openapi.json: no generated request may get a 5xx."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _server import KEY, Server


def _schemathesis() -> str:
    exe = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    if exe is None:
        pytest.fail("schemathesis is not installed (it is in the dev extra)")
    return exe


def test_no_generated_request_gets_a_server_error(upstream_base, tmp_path):
    # A short maximum duration makes generated jobs with the 120 s default a quick 400, and a
    # small queue makes the rest a quick 429, so the fuzzing measures the API, not the model.
    srv = Server(upstream_base, tmp_path, ACESTEP_QUEUE_MAXSIZE="2", ACESTEP_MAX_DURATION="10")
    try:
        command = [
            _schemathesis(), "run", f"http://127.0.0.1:{srv.port}/openapi.json",
            "--checks", "not_a_server_error", "--header", f"Authorization: Bearer {KEY}",
            "--max-examples", "15", "--request-timeout", "60", "--seed", "1",
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=900)
        assert done.returncode == 0, done.stdout[-6000:]
        assert "Server error" not in done.stdout
    finally:
        srv.stop()
    assert "Traceback" not in srv.log.read_text()
