"""One front door (acestep/jobs/service.py) and one failure table (acestep/jobs/failures.py), on a
real ``acestep --enable-api`` process without an LM (tiny DiT): the same refusal is the same status
and the same words on ``/release_task``, ``/lego`` and ``/format_input``, and the same message in
the Gradio UI and the MCP tools. Before the service, ``/format_input`` answered a wrong request
with "LLM not initialized", and the UI and MCP each worded the LM refusal their own way."""

from __future__ import annotations

import asyncio
import io

import httpx
import pytest
import soundfile as sf
from _server import Server
from gradio_client import Client
from gradio_client.exceptions import AppError
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from acestep.jobs.failures import FAILURE_STATUS, Refusal, RefusalCause
from acestep.testing import synthetic_audio

# The server wants the LM, and the checkpoint has none; no key, so the Gradio client needs no login.
LM_ENV = {"ACESTEP_INIT_LLM": "true", "ACESTEP_API_KEY": ""}
WRONG_BPM = 1000  # past the bpm bound every route checks


@pytest.fixture(scope="module")
def server(upstream_base, tmp_path_factory):
    server = Server(upstream_base, tmp_path_factory.mktemp("front_door"), ui=True, **LM_ENV)
    yield server
    # The UI test leaves its Gradio client (and its heartbeat stream) open, as a browser tab does:
    # SIGTERM must still stop the server at once (acestep/serving/listen.py), not after the 60 s
    # grace that ends in a SIGKILL.
    assert server.stop() < 30


def wav() -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, synthetic_audio(3.0, seed=2), 48000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def detail(response: httpx.Response) -> str:
    return response.json()["detail"]


def mcp_error(server: Server, tool: str, arguments: dict) -> str:
    """The text of a tool call that must fail, in a fresh MCP session over streamable HTTP."""
    url = f"http://127.0.0.1:{server.port}/mcp/"

    async def run():
        async with (
            httpx.AsyncClient(headers=server.auth, timeout=120, trust_env=False) as http,
            streamable_http_client(url, http_client=http) as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            return await session.call_tool(tool, arguments)

    result = asyncio.run(asyncio.wait_for(run(), 120))
    assert result.isError, result.content
    return result.content[0].text


def test_the_same_refusal_is_the_same_status_and_words_on_every_route(server):
    release = server.post("/release_task", json={"prompt": "x", "bpm": WRONG_BPM})
    lego = server.post(
        "/lego",
        data={"track_type": "drums", "bpm": str(WRONG_BPM)},
        files={"audio_file": ("beat.wav", wav(), "audio/wav")},
    )
    format_input = server.post("/format_input", json={"prompt": "x", "param_obj": {"bpm": WRONG_BPM}})
    answers = (release.text, lego.text, format_input.text)
    statuses = {r.status_code for r in (release, lego, format_input)}
    assert statuses == {FAILURE_STATUS["input"]} == {400}, answers
    assert detail(release) == detail(lego) == detail(format_input), answers
    assert "bpm" in detail(lego)
    # A request that needs the LM: one status, and the table's reason names the fix on both routes.
    thinking = server.post("/release_task", json={"prompt": "x", "thinking": True})
    formatting = server.post("/format_input", json={"prompt": "x"})
    assert thinking.status_code == formatting.status_code == FAILURE_STATUS[RefusalCause.LM_MISSING]
    why = "The 5 Hz LM is not available on this server: "
    missing = detail(formatting).split(why)[1]
    assert f"{why}{missing}; or leave it out" in detail(thinking), (thinking.text, formatting.text)
    assert "acestep-download" in detail(formatting)
    assert not list((server.workdir / "tmp" / "uploads").iterdir())  # the refused upload is gone
    assert server.get("/v1/stats").json()["data"]["jobs"]["total"] == 0  # nothing was queued


def test_the_same_refusal_is_the_same_message_in_the_ui_and_mcp(server):
    rest = detail(server.post("/release_task", json={"prompt": "x", "thinking": True, "audio_duration": 2}))
    tool = mcp_error(server, "generate_music", {"caption": "x", "thinking": True, "duration": 2})
    client = Client(f"http://127.0.0.1:{server.port}/", verbose=False)
    inputs = ["text2music", 2, 4, 1, 1, "x", "", None, 0, -1, 1, "wav"]
    lm = [True, False, False, "", False, 0.85, 2.0, 0.9]  # ui.app.LM_FIELDS, thinking first
    with pytest.raises(AppError) as refused:
        client.predict(*inputs, *lm, api_name="/generate")
    ui = str(refused.value)
    assert tool == f"Error executing tool generate_music: {rest}"  # the SDK's prefix, then ours
    assert ui == rest, (ui, rest)
    assert rest.startswith("thinking needs the 5Hz LM") and "acestep-download" in rest
    assert server.get("/v1/stats").json()["data"]["jobs"]["total"] == 0


def test_a_refusal_carries_the_table_status_and_retry_after():
    full = Refusal(RefusalCause.QUEUE_FULL, "busy", retry_after=7)
    assert (full.status, full.headers) == (429, {"Retry-After": "7"})
    assert Refusal("oom", "out of memory").status == 507 and Refusal("oom", "x").headers is None
    assert Refusal("no such cause", "x").status == 500
