"""Issue 19, item 1: the UI's Gradio API takes as a file input only what was uploaded through it.

A real ``acestep --enable-api`` (no key, loopback) with a tiny checkpoint. Before the fix, Gradio's
own check was skipped (the mounted app never "launched"): a payload naming /etc/passwd was copied
into Gradio's cache, an outside WAV ran as a lego source, and /dev/zero blocked the event loop.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
import soundfile as sf
from _gradio import file_input, gradio_call
from _server import Server

from acestep.testing import synthetic_audio

# The lego tab's inputs after the source, in order: track, bpm, key, caption, batch, seed, steps,
# format, adapters, adapter scale.
LEGO_REST = ["vocals", 120, "", "a vocal stem", 1, 7, 2, "wav", [], 1.0, ""]  # the last: global_caption


@pytest.fixture(scope="module")
def ui(upstream_base, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ui_security")
    server = Server(upstream_base, workdir, ui=True, ACESTEP_API_KEY="")
    yield server
    server.stop()


def gradio_cache_files(server: Server) -> list:
    cache = server.workdir / "tmp" / "gradio"
    return [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else []


def test_a_server_path_is_not_a_file_input(ui):
    before = set(gradio_cache_files(ui))
    event, data = gradio_call(ui, "lego", [file_input("/etc/passwd"), *LEGO_REST])
    assert event == "error", data
    copied = [p for p in gradio_cache_files(ui) if p not in before and p.name == "passwd"]
    assert copied == [], "the server file was copied into Gradio's cache"
    # The answer is the same for a path that does not exist, and names no server folder.
    _, missing = gradio_call(ui, "lego", [file_input("/etc/no-such-file"), *LEGO_REST])
    assert data.replace("/etc/passwd", "PATH") == missing.replace("/etc/no-such-file", "PATH")
    assert str(ui.workdir) not in data and "root" not in data


def test_an_outside_wav_does_not_run_as_a_source(ui, tmp_path):
    outside = tmp_path / "outside.wav"
    sf.write(outside, synthetic_audio(3.0, seed=3), 48000, subtype="PCM_16")
    uploads = ui.workdir / "tmp" / "uploads"
    staged = set(uploads.iterdir()) if uploads.exists() else set()
    jobs = ui.get("/v1/stats").json()["data"]["jobs"]["total"]
    event, data = gradio_call(ui, "lego", [file_input(str(outside)), *LEGO_REST])
    assert event == "error", data
    assert (set(uploads.iterdir()) if uploads.exists() else set()) == staged
    assert ui.get("/v1/stats").json()["data"]["jobs"]["total"] == jobs  # nothing was queued


def test_dev_zero_does_not_block_the_server(ui):
    outcome: dict = {}

    def lego_on_dev_zero() -> None:
        try:
            outcome["result"] = gradio_call(ui, "lego", [file_input("/dev/zero"), *LEGO_REST], timeout=120)
        except httpx.HTTPError as exc:  # pragma: no cover - reported below
            outcome["result"] = ("transport", repr(exc))

    caller = threading.Thread(target=lego_on_dev_zero, daemon=True)
    caller.start()
    time.sleep(1.0)
    started = time.monotonic()
    health = httpx.get(f"http://127.0.0.1:{ui.port}/health", timeout=10, trust_env=False)
    assert health.status_code == 200
    assert time.monotonic() - started < 10
    caller.join(timeout=60)
    assert not caller.is_alive(), "the /dev/zero call never ended"
    assert outcome["result"][0] == "error", outcome


def test_a_real_upload_still_runs(ui, tmp_path):
    """The guard refuses server paths, not uploads: a file sent through Gradio's upload route runs."""
    song = tmp_path / "song.wav"
    sf.write(song, synthetic_audio(3.0, seed=5), 48000, subtype="PCM_16")
    with song.open("rb") as handle:
        uploaded = ui.client.post("/gradio_api/upload", files={"files": ("song.wav", handle, "audio/wav")})
    assert uploaded.status_code == 200, uploaded.text
    [path] = uploaded.json()
    event, data = gradio_call(ui, "lego", [file_input(path), *LEGO_REST], timeout=300)
    assert event == "complete", data
    assert json.loads(data)[0].startswith("Done"), data
