"""The MCP tools' LoRA arguments and tools, through the SDK's client over streamable HTTP."""

from __future__ import annotations

import asyncio
import json

import pytest
from _mcp import http_session
from _server import Server
from mcp import ClientSession

from acestep.testing import make_tiny_lora

SONG = {"caption": "drums", "duration": 2.0, "seed": 9, "inference_steps": 2, "audio_format": "wav32"}


@pytest.fixture(scope="module")
def server(upstream_base, tmp_path_factory):
    folder = tmp_path_factory.mktemp("mcp_loras")
    make_tiny_lora(folder / "drums", layout="peft", variant="base", rank=2, seed=1)
    make_tiny_lora(folder / "fast", variant="turbo", rank=2, seed=2)
    srv = Server(upstream_base, tmp_path_factory.mktemp("mcp_lora"), ACESTEP_LORA_DIR=str(folder))
    yield srv
    srv.stop()


def test_lora_tools_and_arguments(server):
    async def call(session: ClientSession, tool: str, args: dict):
        result = await session.call_tool(tool, args)
        return result.isError, result.content[0].text

    async def run() -> None:
        async with http_session(server) as session:
            error, text = await call(session, "list_loras", {})
            listed = {entry["name"]: entry for entry in json.loads(text)["loras"]}
            assert not error and listed["drums"]["rank"] == 2 and listed["fast"]["compatible"] is False
            error, text = await call(session, "generate_music", SONG | {"lora": ["drums"], "lora_scale": 0.5})
            assert not error and json.loads(text)["lora"] == [{"name": "drums", "scale": 0.5}]
            error, text = await call(session, "generate_music", SONG | {"lora": ["fast"]})
            assert error and "trained on the turbo DiT" in text
            error, text = await call(session, "load_lora", {"name": "ghost"})
            assert error and "no LoRA named 'ghost'" in text
            error, text = await call(session, "load_lora", {"name": "drums"})
            assert not error and json.loads(text)["default"]["adapters"] == [{"name": "drums", "scale": 1.0}]
            error, text = await call(session, "generate_music", SONG)
            assert not error and json.loads(text)["lora"] == [{"name": "drums", "scale": 1.0}]
            error, text = await call(session, "unload_lora", {})
            assert not error and json.loads(text)["adapters"]["loaded"] == []
            error, text = await call(session, "generate_music", SONG)
            assert not error and json.loads(text)["lora"] == []

    asyncio.run(asyncio.wait_for(run(), 600))
