"""Issue 19, items 7 and 9: nothing is left behind, old files are swept, MCP results are bounded.

Real servers with a tiny checkpoint. Before the fix a refused MCP ``lego_stem`` (base64 source)
or a refused UI cover/repaint left its staged upload in ``uploads/``; nothing swept ``uploads/``,
Gradio's cache or the results of a previous process; an unknown task id did not say that a
restart forgets jobs; and MCP embedded every result, however large.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import time
import uuid
from pathlib import Path

import httpx
import pytest
import soundfile as sf
from _gradio import gradio_call, sampling_defaults
from _server import Server
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from acestep.testing import synthetic_audio

DAY = 86400
OLD = time.time() - 2 * DAY  # past the default ACESTEP_RESULT_TTL and ACESTEP_UPLOAD_TTL (1 day)
# Runs for minutes on a CPU; the tests cancel it.
SLOW = {"prompt": "long", "audio_duration": 120, "inference_steps": 200, "batch_size": 1}


def wav_bytes(seconds: float = 3.0, seed: int = 2) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, synthetic_audio(seconds, seed=seed), 48000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def plant(path: Path, mtime: float) -> Path:
    """A file (and its folders) with the given modification time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"old bytes")
    os.utime(path, (mtime, mtime))
    os.utime(path.parent, (mtime, mtime))
    return path


def wait_until(condition, timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


# -- the UI server (no key, as a local user runs it): MCP and the Gradio API -------------------


@pytest.fixture(scope="module")
def ui(upstream_base, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ui_leaks")
    server = Server(upstream_base, workdir, ui=True, ACESTEP_API_KEY="", ACESTEP_MCP_EMBED_MB="1")
    yield server
    server.stop()


async def _mcp_calls(server: Server, calls: list[tuple[str, dict]]) -> list:
    url = f"http://127.0.0.1:{server.port}/mcp/"
    async with (
        httpx.AsyncClient(timeout=600, trust_env=False) as http,
        streamable_http_client(url, http_client=http) as (read, write, _),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        return [await session.call_tool(name, arguments) for name, arguments in calls]


def mcp_calls(server: Server, calls: list[tuple[str, dict]]) -> list:
    return asyncio.run(asyncio.wait_for(_mcp_calls(server, calls), 600))


def test_a_refused_lego_stem_leaves_no_upload(ui):
    uploads = ui.workdir / "tmp" / "uploads"
    audio = base64.b64encode(wav_bytes()).decode()
    broken = base64.b64encode(b"RIFF\x00\x00\x00\x00WAVE" + b"\x00" * 64).decode()  # sniffs as WAV
    base = {"track_type": "drums", "bpm": 120, "audio_base64": audio}
    refusals = {
        "undecodable source": base | {"audio_base64": broken},
        "bpm out of range": base | {"bpm": 5},
        "bad key": base | {"key_scale": "H major"},
        "bad format": base | {"audio_format": "exe"},
        "batch too large": base | {"batch_size": 99},
        "caption too long": base | {"caption": "x" * 5000},
        "lora scale out of range": base | {"lora": ["some"], "lora_scale": 99.0},
        "lora as a path": base | {"lora": ["../../etc/passwd"]},
        "unknown lora": base | {"lora": ["no-such-adapter"]},  # refused when queued
        "unknown track": base | {"track_type": "kazoo"},
    }
    before = ui.get("/v1/stats").json()["data"]["jobs"]  # the module's other tests may have run jobs
    results = mcp_calls(ui, [("lego_stem", arguments) for arguments in refusals.values()])
    for (case, _), result in zip(refusals.items(), results, strict=True):
        assert result.isError, (case, result.content)
    assert files_under(uploads) == [], "refused lego_stem calls left their uploads behind"
    stats = ui.get("/v1/stats").json()["data"]
    assert stats["jobs"]["succeeded"] == before["succeeded"] and stats["queue_size"] == 0, stats


def test_mcp_embeds_audio_only_within_the_budget(ui):
    """ACESTEP_MCP_EMBED_MB=1: the first 2.5 s float WAV (under 1 MiB) is embedded, the second is
    a link to /v1/audio that serves the same bytes."""
    arguments = {"caption": "x", "duration": 2.5, "batch_size": 2, "inference_steps": 2, "seed": 1}
    arguments["audio_format"] = "wav"  # MCP's default is mp3, far under the budget
    [result] = mcp_calls(ui, [("generate_music", arguments)])
    assert not result.isError, result.content
    summary = json.loads(result.content[0].text)
    sizes = [Path(p).stat().st_size for p in summary["files"]]
    assert summary["embedded"] == [True, False], sizes
    embedded, link = result.content[1:]
    first, second = (Path(path).read_bytes() for path in summary["files"])
    assert embedded.type == "resource" and base64.b64decode(embedded.resource.blob) == first
    assert link.type == "resource_link" and link.size == sizes[1]
    assert str(link.uri).endswith(summary["urls"][1])
    served = ui.client.get(str(link.uri))
    assert served.status_code == 200 and served.content == second


def test_a_refused_ui_cover_or_repaint_leaves_no_upload(ui, tmp_path):
    song = tmp_path / "song.wav"
    song.write_bytes(wav_bytes())
    with song.open("rb") as handle:
        uploaded = ui.client.post("/gradio_api/upload", files={"files": ("song.wav", handle, "audio/wav")})
    assert uploaded.status_code == 200, uploaded.text
    source = {"path": uploaded.json()[0], "meta": {"_type": "gradio.FileData"}}
    lm = [False, True, True, "", False, 0.85, 2.0, 0.9]  # the LM accordion's defaults

    def generate(task: str, duration: float, start: float, end: float) -> list:
        # task, duration, seed, batch, steps, caption, lyrics, source, start, end, strength, format
        head = [task, duration, 1, 1, 2, "x", "", source, start, end, 1.0, "wav", *lm, [], 1.0]
        return head + sampling_defaults()

    uploads = ui.workdir / "tmp" / "uploads"
    refusals = {
        "cover over the duration limit": ("generate", generate("cover", 99999, 0, -1)),
        "repaint with its end before its start": ("generate", generate("repaint", 10, 5, 2)),
        "lego with a bad key": ("lego", [source, "vocals", 120, "H major", "x", 1, 1, 2, "wav", [], 1.0, ""]),
    }
    for case, (api_name, data) in refusals.items():
        event, detail = gradio_call(ui, api_name, data)
        assert event == "error", (case, detail)
        assert "input values" not in detail, (case, detail)  # refused by the handler, not Gradio's arity
        assert files_under(uploads) == [], f"{case}: the staged copy was left behind"


# -- sweeps by age, at start and periodically, and a restart ------------------------------------


@pytest.fixture(scope="module")
def restarted(upstream_base, tmp_path_factory):
    """A server that queued a job and stopped; old and new files planted; the same folders served
    again by a new process that sweeps every second."""
    workdir = tmp_path_factory.mktemp("retention")
    first = Server(upstream_base, workdir)
    lost = first.release(json=SLOW)
    # A stop lets the running job finish (minutes here): cancel it first. The new process knows
    # nothing of it either way.
    assert first.post("/v1/cancel", json={"task_id": lost}).status_code == 200
    assert first.stop() < 30
    tmp = workdir / "tmp"
    planted = {
        "old upload": plant(tmp / "uploads" / "src_audio_old.wav", OLD),
        "old result": plant(tmp / "api_audio" / str(uuid.uuid4()) / "old.wav", OLD),
        "old cache": plant(tmp / "gradio" / ("a" * 64) / "old.wav", OLD),
        "old cut-off upload": plant(tmp / "gradio" / "tmpk3x_9zq1", OLD),  # Gradio's tempfile name
        "gradio's other file": plant(tmp / "gradio" / "notes.txt", OLD),  # not a name Gradio makes
        "new upload": plant(tmp / "uploads" / "src_audio_new.wav", time.time()),
        "new result": plant(tmp / "api_audio" / str(uuid.uuid4()) / "new.wav", time.time()),
        "new cache": plant(tmp / "gradio" / ("b" * 64) / "new.wav", time.time()),
        "operator's file": plant(tmp / "api_audio" / "keep-me" / "mine.wav", OLD),  # not a job folder
    }
    server = Server(upstream_base, workdir, ACESTEP_CLEANUP_INTERVAL="1")
    yield server, planted, lost
    server.stop()


def test_a_restart_sweeps_old_files_and_says_what_it_forgot(restarted):
    server, planted, lost = restarted
    old = [planted[name] for name in ("old upload", "old result", "old cache", "old cut-off upload")]
    wait_until(lambda: not any(p.exists() for p in old), what=f"the start sweep of {old}")
    assert not old[1].parent.exists() and not old[2].parent.exists()  # their folders went too
    for name in ("new upload", "new result", "new cache", "operator's file", "gradio's other file"):
        assert planted[name].exists(), name
    # The first process's queued job is gone, and the answer says why it may be.
    entry = server.query(lost)
    assert entry["status"] == 2 and "restarted" in entry["error"] and "in memory" in entry["error"]


def test_the_periodic_sweep_keeps_the_inputs_of_queued_jobs(restarted):
    server, _, _ = restarted
    uploads = server.workdir / "tmp" / "uploads"
    running = server.release(json=SLOW)
    wait_until(lambda: server.query(running)["stage"] == "diffusion", 120, "the first job to run")
    before = set(files_under(uploads))
    queued = server.release(
        data={"task_type": "cover", "prompt": "x", "audio_duration": 3, "inference_steps": 2},
        files={"src_audio": ("song.wav", wav_bytes(), "audio/wav")},
    )
    [source] = set(files_under(uploads)) - before
    os.utime(source, (OLD, OLD))  # as old as an orphan, but its job waits
    orphan = plant(uploads / "ui_orphan.wav", OLD)
    wait_until(lambda: not orphan.exists(), 30, "the periodic sweep of an orphaned upload")
    time.sleep(3)  # three more sweeps
    assert server.query(queued)["status"] == 0 and source.exists(), "a queued job's input was swept"
    for task_id in (queued, running):
        server.post("/v1/cancel", json={"task_id": task_id})
        assert server.wait(task_id)["status"] == 2
    assert not source.exists()  # the cancelled job's end removed it
