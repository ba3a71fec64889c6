"""``generate_music`` with the 5 Hz LM, through the MCP SDK's client over streamable HTTP on a real
``acestep-api`` (tiny DiT and tiny LM): thinking returns the LM's plan and codes; a server without
an LM refuses thinking as a tool error, and still generates without it."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import httpx
import soundfile as sf
from _server import Server
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from acestep.lm.cot import CODE_TOKEN_RE

LM_ENV = {"ACESTEP_INIT_LLM": "true"}  # the cpu tier leaves the LM off by default
SECONDS = 6
SHORT = {"duration": SECONDS, "inference_steps": 2, "batch_size": 1, "seed": 4}


def call(server: Server, tool: str, arguments: dict):
    """One tool call in a fresh MCP session; returns the SDK's ``CallToolResult``."""
    url = f"http://127.0.0.1:{server.port}/mcp/"

    async def run():
        async with (
            httpx.AsyncClient(headers=server.auth, timeout=600, trust_env=False) as http,
            streamable_http_client(url, http_client=http) as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            return await session.call_tool(tool, arguments)

    return asyncio.run(asyncio.wait_for(run(), 600))


def summary_and_audio(result) -> tuple[dict, list[bytes]]:
    assert not result.isError, result.content
    blobs = [base64.b64decode(c.resource.blob) for c in result.content[1:] if c.type == "resource"]
    return json.loads(result.content[0].text), blobs


def test_thinking_returns_the_lm_its_plan_and_codes(lm_checkpoint, tmp_path):
    server = Server(lm_checkpoint, tmp_path, **LM_ENV)
    try:
        arguments = {"caption": "a tiny song", "thinking": True, "use_cot_caption": False, **SHORT}
        summary, blobs = summary_and_audio(call(server, "generate_music", arguments))
    finally:
        server.stop()
    assert summary["lm_model"] == "acestep-5Hz-lm-1.7B"
    (codes,) = summary["audio_codes"]  # one item, 5 codes a second
    assert len(CODE_TOKEN_RE.findall(codes)) == SECONDS * 5
    assert summary["caption"] == "a tiny song"  # use_cot_caption off: the user's caption stands
    assert 30 <= summary["bpm"] <= 300 and summary["key_scale"] and summary["time_signature"]
    assert summary["duration"] == SECONDS and summary["lm_metas"]
    samples, rate = sf.read(io.BytesIO(blobs[0]))
    assert rate == 48000 and samples.shape[0] == SECONDS * 48000 and summary["seeds"] == [4]


def test_without_an_lm_thinking_is_a_tool_error(upstream_base, tmp_path):
    server = Server(upstream_base, tmp_path, **LM_ENV)
    try:
        refused = call(server, "generate_music", {"caption": "x", "thinking": True, **SHORT})
        # The optional switches alone start no LM: a plain generation, with no LM in its result.
        plain = call(server, "generate_music", {"caption": "x", "use_cot_caption": True, **SHORT})
        stats = server.get("/v1/stats").json()["data"]["jobs"]
    finally:
        server.stop()
    assert refused.isError
    message = refused.content[0].text
    assert "thinking needs the 5Hz LM" in message and "acestep-download" in message, message
    summary, blobs = summary_and_audio(plain)
    assert "lm_model" not in summary and "audio_codes" not in summary and len(blobs) == 1
    assert stats["succeeded"] == 1 and stats["failed"] == 0  # the refusal never reached the queue
