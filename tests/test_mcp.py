"""MCP tools through the SDK's own client: over stdio (``acestep-mcp``) and over streamable HTTP
(mounted on ``acestep-api`` at /mcp/, same key). The lego stem comes back as audio."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import sys

import httpx
import pytest
import soundfile as sf
from _server import KEY, Server
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from acestep.testing import synthetic_audio

TOOLS = {"generate_music", "lego_stem", "get_status", "unload_model", "load_model"}
SECONDS = 5.5


def source_wav(path=None) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, synthetic_audio(SECONDS, seed=5), 48000, format="WAV", subtype="PCM_16")
    if path is not None:
        path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def stem_of(result) -> tuple[dict, bytes]:
    assert not result.isError, result.content
    summary = json.loads(result.content[0].text)
    blobs = [c.resource.blob for c in result.content[1:] if c.type == "resource"]
    assert len(blobs) == len(summary["files"]) >= 1
    return summary, base64.b64decode(blobs[0])


async def exercise(session: ClientSession, **source) -> None:
    await session.initialize()
    names = {tool.name for tool in (await session.list_tools()).tools}
    assert TOOLS <= names
    result = await session.call_tool("lego_stem", {"track_type": "drums", "bpm": 120, "seed": 3, **source})
    summary, audio = stem_of(result)
    samples, rate = sf.read(io.BytesIO(audio))
    assert rate == 48000 and samples.shape[0] == int(SECONDS * 48000) and summary["seeds"] == [3]
    bad = await session.call_tool("lego_stem", {"track_type": "kazoo", "bpm": 120, **source})
    assert bad.isError and "track_type" in bad.content[0].text
    status = await session.call_tool("get_status", {})
    assert not status.isError and json.loads(status.content[0].text)["queue"]["jobs"]["succeeded"] >= 1
    unload = await session.call_tool("unload_model", {"level": "free"})
    assert not unload.isError and json.loads(unload.content[0].text)["action"] == "free"


def test_stdio(upstream_base, tmp_path):
    source = tmp_path / "inputs" / "song.wav"
    source.parent.mkdir()
    source_wav(source)
    env = os.environ | {
        "ACESTEP_CHECKPOINTS_DIR": str(upstream_base),
        "ACESTEP_CONFIG_PATH": "acestep-v15-base",
        "ACESTEP_DEVICE": "cpu",
        "ACESTEP_TMPDIR": str(tmp_path / "tmp"),
        "ACESTEP_ALLOWED_PATHS": str(source.parent),
        "ACESTEP_KEEP_ALIVE": "-1",
    }
    params = StdioServerParameters(command=sys.executable, args=["-m", "acestep.cli.mcp"], env=env)

    async def run() -> None:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await exercise(session, audio_path=str(source))
            outside = await session.call_tool(
                "lego_stem", {"track_type": "drums", "bpm": 90, "audio_path": "/etc/passwd"}
            )
            assert outside.isError and "outside the allowed directories" in outside.content[0].text
            # No LM folder here: the worker refuses thinking before any tensor, as a tool error.
            thinking = await session.call_tool(
                "generate_music", {"caption": "x", "thinking": True, "duration": 2, "inference_steps": 1}
            )
            assert thinking.isError and "needs the 5Hz LM" in thinking.content[0].text
            assert "acestep-download" in thinking.content[0].text

    asyncio.run(asyncio.wait_for(run(), 600))


@pytest.fixture(scope="module")
def server(upstream_base, tmp_path_factory):
    srv = Server(upstream_base, tmp_path_factory.mktemp("mcp"))
    yield srv
    srv.stop()


def test_streamable_http_with_the_api_key(server):
    url = f"http://127.0.0.1:{server.port}/mcp/"
    audio = base64.b64encode(source_wav()).decode()

    async def run() -> None:
        async with (
            httpx.AsyncClient(headers=server.auth, timeout=600, trust_env=False) as http,
            streamable_http_client(url, http_client=http) as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await exercise(session, audio_base64=audio)

    asyncio.run(asyncio.wait_for(run(), 600))
    # The REST API answers on the same port, and the job shows up in its stats.
    assert server.get("/v1/stats").json()["data"]["jobs"]["succeeded"] >= 1


def test_a_wrong_key_is_refused(server):
    url = f"http://127.0.0.1:{server.port}/mcp/"
    response = server.client.post(url, json={}, headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401
    assert server.client.post(url, json={}).status_code == 401

    async def run() -> None:
        headers = {"Authorization": "Bearer wrong"}
        async with (
            httpx.AsyncClient(headers=headers, timeout=30, trust_env=False) as http,
            streamable_http_client(url, http_client=http) as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()

    with pytest.raises(BaseException):  # noqa: B017 - the SDK wraps the 401 in an exception group
        asyncio.run(asyncio.wait_for(run(), 60))
    assert KEY not in url
