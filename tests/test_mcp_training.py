"""The MCP training tools through the SDK's client over streamable HTTP: start a LoRA run, follow
it, stop it (its checkpoint and adapter kept); refusals are tool errors with the REST reason."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import soundfile as sf
from _mcp import http_session
from _server import Server
from mcp import ClientSession

from acestep.testing import synthetic_audio


@pytest.fixture(scope="module")
def server(upstream_base, tmp_path_factory):
    root = tmp_path_factory.mktemp("mcp_training")
    songs = root / "training" / "songs"
    songs.mkdir(parents=True)
    for i in range(2):
        sf.write(songs / f"song{i}.wav", synthetic_audio(3.0, seed=i), 48000)
        (songs / f"song{i}.txt").write_text(f"verse {i}\nla la la")
    srv = Server(
        upstream_base,
        tmp_path_factory.mktemp("mcp_training_server"),
        ACESTEP_TRAINING="on",
        ACESTEP_TRAINING_DIR=str(root / "training"),
        ACESTEP_LORA_DIR=str(root / "loras"),
    )
    yield srv
    srv.stop()


async def call(session: ClientSession, tool: str, args: dict) -> tuple[bool, dict | str]:
    result = await session.call_tool(tool, args)
    text = result.content[0].text
    return result.isError, (text if result.isError else json.loads(text))


async def poll(session: ClientSession, task_id: str, until, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        error, status = await call(session, "training_status", {"task_id": task_id})
        assert not error, status
        if until(status):
            return status
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.1)


def test_start_follow_and_stop_a_run(server):
    async def run() -> None:
        async with http_session(server) as session:
            names = {tool.name for tool in (await session.list_tools()).tools}
            assert {"start_training", "training_status", "stop_training"} <= names

            error, text = await call(session, "start_training", {"dataset": "../elsewhere"})
            assert error and "outside the training folder" in text
            error, text = await call(
                session, "start_training", {"dataset": "songs", "options": {"colour": 1}}
            )
            assert error and "colour" in text

            args = {
                "dataset": "songs",
                "adapter_type": "lora",
                "output_name": "agent",
                "rank": 4,
                "alpha": 8,
                "train_epochs": 5000,
                "gradient_accumulation": 1,
                "crop_seconds": 2,
                "options": {"warmup_steps": 0, "save_every_n_epochs": 0},
            }
            error, started = await call(session, "start_training", args)
            assert not error, started
            assert started["output_name"] == "agent" and started["samples"] == 2 and started["epochs"] == 5000
            task_id = started["task_id"]
            error, text = await call(session, "start_training", args | {"output_name": "other"})
            assert error and "already" in text

            running = await poll(
                session, task_id, lambda s: s["training"]["step"] >= 1 or not s["is_training"]
            )
            assert running["is_training"] and running["stage"] == "train", running
            error, stopped = await call(session, "stop_training", {})
            assert not error and stopped["outcome"] == "stopping"
            ended = await poll(session, task_id, lambda s: not s["is_training"])
            assert ended["state"] == "succeeded" and ended["training"]["stopped"], ended
            assert ended["training"]["checkpoints"] and ended["training"]["adapter"] == "agent"
            assert ended["training"]["losses"]

            error, listed = await call(session, "list_loras", {})
            assert not error and "agent" in {entry["name"] for entry in listed["loras"]}
            error, text = await call(session, "training_status", {"task_id": "nope"})
            assert error and "no training run" in text

    asyncio.run(asyncio.wait_for(run(), 600))
