"""MCP for long jobs, through the SDK's own client on a real ``acestep-api`` (tiny base model):
progress notifications keep flowing through a call of more than a minute (queued, then running),
a client without progress support submits with ``wait`` false and polls ``job_status`` (and may
``cancel_job``), results past ``ACESTEP_MCP_EMBED_MB`` come back as links that download the file,
the default format is mp3, and extract and complete run from their tools."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from pathlib import Path

import pytest
import soundfile as sf
from _mcp import http_session
from _server import Server

from acestep.tasks import MAX_DURATION_S, MAX_STEPS
from acestep.testing import synthetic_audio

RATE = 48000
FAST = {"inference_steps": 2, "seed": 5}
# The longest, slowest request: minutes on a CPU. Two of them hold the queue until the test cancels
# them, so even a CPU that finishes one inside the minute leaves the other running.
BLOCKER = {"caption": "x", "duration": MAX_DURATION_S, "inference_steps": MAX_STEPS}
BLOCKERS = 2
SONG = {"caption": "a slow ambient drone", "duration": 3, "inference_steps": 8, "seed": 1}
QUEUED_S = 61.0  # the job under test waits this long behind the blocker
MAX_GAP_S = 15.0  # the heartbeat is 5 s: a client would see a note far more often than this


@pytest.fixture(scope="module")
def server(upstream_base, tmp_path_factory):
    # 1 MiB: a 2 s mp3 (~30 KB) is embedded, a 4 s float WAV (1.5 MiB) is a link.
    srv = Server(upstream_base, tmp_path_factory.mktemp("mcp_long"), ACESTEP_MCP_EMBED_MB="1")
    yield srv
    srv.stop()


def call(server: Server, tool: str, arguments: dict):
    async def run():
        async with http_session(server) as session:
            return await session.call_tool(tool, arguments)

    return asyncio.run(asyncio.wait_for(run(), 600))


def summary_of(result) -> dict:
    assert not result.isError, result.content
    return json.loads(result.content[0].text)


def wav_base64(seconds: float) -> str:
    buffer = io.BytesIO()
    sf.write(buffer, synthetic_audio(seconds, seed=3), RATE, format="WAV", subtype="FLOAT")
    return base64.b64encode(buffer.getvalue()).decode()


def is_mp3(data: bytes) -> bool:
    return data[:3] == b"ID3" or (data[0] == 0xFF and data[1] & 0xE0 == 0xE0)


def test_a_long_job_keeps_sending_progress(server):
    """A call that lasts over a minute: its job waits behind a blocker, where its fraction does not
    move at all, until the test cancels the blocker past the minute; then it runs. Notes arrive all
    along, always rising. The minute is the test's to hold (not a guess at the CPU's speed), so the
    call outlasts it on any machine."""
    notes: list[tuple[float, float, str | None]] = []  # (arrival, progress, message)
    clock: dict[str, float] = {}

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        notes.append((time.monotonic(), progress, message))

    async def scenario():
        async with http_session(server) as control:
            blocker_ids = [
                summary_of(await control.call_tool("generate_music", BLOCKER | {"wait": False}))["task_id"]
                for _ in range(BLOCKERS)
            ]

            async def long_call():
                async with http_session(server) as session:
                    clock["started"] = time.monotonic()
                    result = await session.call_tool("generate_music", SONG, progress_callback=on_progress)
                    return time.monotonic(), result

            async def release_the_queue():
                while "started" not in clock:
                    await asyncio.sleep(0.05)
                await asyncio.sleep(QUEUED_S - (time.monotonic() - clock["started"]))
                return [
                    summary_of(await control.call_tool("cancel_job", {"task_id": blocker_id}))["outcome"]
                    for blocker_id in blocker_ids
                ]

            return await asyncio.gather(long_call(), release_the_queue())

    (ended, result), cancelled = asyncio.run(asyncio.wait_for(scenario(), 600))
    summary = summary_of(result)
    assert "cancelling" in cancelled, cancelled  # a blocker still ran: the job waited throughout
    started = clock["started"]
    assert ended - started > 60.0, ended - started  # what this test claims
    assert len(summary["files"]) == 1 and summary["files"][0].endswith(".mp3")
    arrivals = [started, *(at for at, _, _ in notes), ended]
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:], strict=False)]
    assert max(gaps) < MAX_GAP_S, gaps
    values = [progress for _, progress, _ in notes]
    assert all(later > earlier for earlier, later in zip(values, values[1:], strict=False)), values
    assert 0.0 <= values[0] and values[-1] == 1.0
    # While queued the fraction is 0: those notes are heartbeats, nudged up by a hair each, and
    # they say where the job waits.
    queued = [(at, value) for at, value, message in notes if (message or "").startswith("queued: position ")]
    assert queued[-1][0] - started > QUEUED_S - MAX_GAP_S and queued[-1][1] < 1e-3, queued
    stages = {message for _, _, message in notes}
    running = {"starting", "conditioning", "diffusion", "decode", "save"}  # the stages after the queue
    assert "done" in stages and stages & running, stages


def test_a_client_without_progress_submits_and_polls(server):
    ahead = {"caption": "x", "duration": 4, "inference_steps": 30, "wait": False}
    small = {"caption": "a short chime", "duration": 2, "wait": False} | FAST

    async def scenario():
        async with http_session(server) as session:
            first = summary_of(await session.call_tool("generate_music", ahead))
            queued = summary_of(await session.call_tool("generate_music", small))
            dropped = summary_of(await session.call_tool("generate_music", small))
            cancelled = summary_of(await session.call_tool("cancel_job", {"task_id": dropped["task_id"]}))
            gone = await session.call_tool("job_status", {"task_id": dropped["task_id"]})
            unknown = await session.call_tool("job_status", {"task_id": "no-such-task"})
            return first, queued, dropped, cancelled, summary_of(gone), unknown

    first, queued, dropped, cancelled, gone, unknown = asyncio.run(asyncio.wait_for(scenario(), 120))
    # Returned at once: the jobs behind the first one are still waiting for it.
    assert queued["status"] == "queued" and queued["queue_position"] >= 1, queued
    assert dropped["status"] == "queued" and dropped["queue_position"] > queued["queue_position"]
    assert cancelled["outcome"] == "cancelled"
    assert gone["status"] == "failed" and "cancelled" in gone["error"], gone
    assert unknown.isError and "no-such-task" in unknown.content[0].text

    # Another session polls: the submitting calls have returned and their jobs still run to the end.
    seen = []

    async def poll():
        async with http_session(server) as session:
            while True:
                result = await session.call_tool("job_status", {"task_id": queued["task_id"]})
                status = summary_of(result)
                seen.append(status["status"])
                if status["status"] in ("succeeded", "failed"):
                    return result
                await asyncio.sleep(0.2)

    result = asyncio.run(asyncio.wait_for(poll(), 300))
    summary = summary_of(result)
    assert seen[0] in ("queued", "running") and seen[-1] == "succeeded", seen
    assert summary["task_id"] == queued["task_id"] and summary["seeds"] == [FAST["seed"]]
    (audio,) = [part for part in result.content[1:] if part.type == "resource"]
    assert base64.b64decode(audio.resource.blob) == Path(summary["files"][0]).read_bytes()
    assert summary_of(call(server, "job_status", {"task_id": first["task_id"]}))["status"] == "succeeded"


def test_results_past_the_embed_limit_are_links_and_mp3_is_the_default(server):
    small = summary_of(
        embedded_call := call(server, "generate_music", {"caption": "a bell", "duration": 2} | FAST)
    )
    assert small["files"][0].endswith(".mp3") and small["embedded"] == [True]
    (part,) = embedded_call.content[1:]
    assert part.type == "resource" and part.resource.mimeType == "audio/mpeg"
    data = base64.b64decode(part.resource.blob)
    assert is_mp3(data) and data == Path(small["files"][0]).read_bytes()

    linked_call = call(
        server, "generate_music", {"caption": "a bell", "duration": 4, "audio_format": "wav"} | FAST
    )
    big = summary_of(linked_call)
    assert big["embedded"] == [False]
    (link,) = linked_call.content[1:]
    assert link.type == "resource_link" and link.mimeType == "audio/wav"
    on_disk = Path(big["files"][0]).read_bytes()
    assert len(on_disk) > 2**20 and link.size == len(on_disk)
    assert str(link.uri).endswith(big["urls"][0])
    downloaded = server.download(str(link.uri))  # with the key, as any client of the server
    assert downloaded == on_disk and downloaded[:4] == b"RIFF"
    assert server.client.get(str(link.uri)).status_code == 401  # the link is behind the key


def test_extract_and_complete_run_from_their_tools(server):
    source = {"audio_base64": wav_base64(2.4)} | FAST
    extracted = summary_of(call(server, "extract_stem", source | {"track_type": "Drums"}))
    completed_call = call(
        server, "complete_track", source | {"track_classes": ["bass", "drums"], "caption": "a funk band"}
    )
    completed = summary_of(completed_call)
    for summary in (extracted, completed):
        samples, rate = sf.read(Path(summary["files"][0]))
        assert rate == RATE and abs(samples.shape[0] / RATE - 2.4) < 0.1, samples.shape
    bad = call(server, "complete_track", source | {"track_classes": ["kazoo"], "caption": "x"})
    assert bad.isError and "track_classes must be one of" in bad.content[0].text
    refused = call(server, "edit_audio", source | {"task_type": "extract"})
    assert refused.isError and "extract_stem" in refused.content[0].text
