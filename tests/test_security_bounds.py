"""Issue 19, items 6, 8 and 10 (part): every request field is bounded; waits for the running job
never take the shared thread pool; a NUL byte in a path is a 400. Through a real server."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from _server import KEY, Server
from pydantic import BaseModel

from acestep.request import GenerationRequest
from acestep.serving.params import ALL_SPECS, MAX_MODEL_CHARS, MAX_TASK_IDS
from acestep.tasks import MAX_AUDIO_CODE_CHARS, MAX_PATH_CHARS, MAX_SEED_CHARS, MAX_TEXT_CHARS

SIZED = {"str", "bytes", "list", "tuple", "set", "frozenset", "dict"}  # core-schema types with a length
WAIT_LIMIT_S = 5  # the module server's ACESTEP_CONTROL_TIMEOUT
PROMPT_S = 10.0  # "answers promptly": generous; the old code hung until the job ended
ABANDONED = 48  # more than anyio's 40 shared threads
# Minutes on the tiny model (measured: about 2-5 s a step on two busy cores); cancelled when done.
LONG_JOB = {"prompt": "long", "audio_duration": 240, "inference_steps": 200, "batch_size": 1}


def unbounded(schema: object, where: str = "") -> list[str]:
    """Every place in a pydantic core schema where a str, list, dict... has no max_length."""
    found = []
    if isinstance(schema, dict):
        if schema.get("type") in SIZED and schema.get("max_length") is None:
            found.append(f"{where} ({schema['type']})")
        for key, value in schema.items():
            if key not in ("default", "metadata", "serialization"):
                found += unbounded(value, f"{where}.{key}" if where else key)
    elif isinstance(schema, list):
        for index, value in enumerate(schema):
            found += unbounded(value, f"{where}[{index}]")
    return found


def field_schemas(model: type[BaseModel]) -> dict:
    """Each field's core schema (under the model's own, and any model validator's, wrappers)."""
    schema = model.__pydantic_core_schema__
    while schema["type"] != "model-fields":
        schema = schema["schema"]
    return schema["fields"]


def test_every_request_field_has_a_bound():
    class Loose(BaseModel):  # the walker finds what it must find
        text: str
        items: list[float] | None = None
        table: dict[str, int] = {}

    assert [name for name, schema in field_schemas(Loose).items() if unbounded(schema)] == [
        "text",
        "items",
        "table",
    ]
    loose = {name: unbounded(schema) for name, schema in field_schemas(GenerationRequest).items()}
    assert {name: places for name, places in loose.items() if places} == {}


def test_every_rest_text_parameter_has_a_bound():
    """A /release_task string either becomes a (bounded) GenerationRequest field or has its own bound."""
    fields = GenerationRequest.model_fields
    loose = [
        spec.name
        for spec in ALL_SPECS
        if spec.kind == "str" and spec.max_chars is None and (spec.target or spec.name) not in fields
    ]
    assert loose == []


@pytest.fixture(scope="module")
def server(upstream_base, tmp_path_factory):
    srv = Server(upstream_base, tmp_path_factory.mktemp("bounds"), ACESTEP_CONTROL_TIMEOUT=str(WAIT_LIMIT_S))
    yield srv
    srv.stop()


def detail(response: httpx.Response) -> str:
    return str(response.json().get("detail", ""))


# Fields that had no bound (caption, lyrics and the rest are checked by the structural test above).
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"timesteps": [0.5] * 20000}, "timesteps"),
        ({"timesteps": ",".join(["0.5"] * 20000)}, "timesteps"),
        ({"instruction": "x" * (MAX_TEXT_CHARS + 1)}, "instruction"),
        ({"audio_code_string": "<|audio_code_1|>" * (MAX_AUDIO_CODE_CHARS // 16 + 1)}, "audio_code_string"),
        ({"seed": "1," * MAX_SEED_CHARS}, "seed"),
        ({"track_classes": ["drums"] * 1000, "task_type": "complete"}, "track_classes"),
        ({"key_scale": "C major" + " " * 10000}, "key_scale"),
        ({"vocal_language": "e" * 10000}, "vocal_language"),
        ({"src_audio_path": "{uploads}/" + "a" * MAX_PATH_CHARS, "task_type": "cover"}, "src_audio"),
        ({"lm_model_path": "/m" * MAX_PATH_CHARS}, "lm_model_path"),
        ({"model": "m" * (MAX_MODEL_CHARS + 1)}, "model"),
        ({"infer_method": "o" * 10000}, "infer_method"),
        ({"param_obj": {"instruction": "y" * (MAX_TEXT_CHARS + 1)}}, "instruction"),
    ],
)
def test_over_long_fields_are_a_400_naming_the_field(server, body, field):
    uploads = server.workdir / "tmp" / "uploads"  # inside the allowed roots: only the length is wrong
    body = {key: value.replace("{uploads}", str(uploads)) if isinstance(value, str) else value
            for key, value in body.items()}  # fmt: skip
    response = server.post("/release_task", json=body)
    assert response.status_code == 400, (field, response.status_code, response.text[:300])
    assert field in detail(response)
    assert len(response.content) < 2000  # the refusal does not echo the value back


def test_over_long_ids_are_refused_and_the_server_keeps_serving(server):
    ids = server.post("/query_result", json={"task_id_list": ["x"] * (MAX_TASK_IDS + 1)})
    assert ids.status_code == 400 and "task_id_list" in detail(ids)
    long_id = server.post("/query_result", json={"task_id_list": ["x" * 10000]})
    assert long_id.status_code == 400 and "task_id_list" in detail(long_id)
    cancel = server.post("/v1/cancel", json={"task_id": "x" * 10000})
    assert cancel.status_code == 400 and "task_id" in detail(cancel) and len(cancel.content) < 2000
    # Unknown parameters are listed in the warning, but not all of them and not at any length.
    unknown = {f"unknown_{i}_{'z' * 500}": 1 for i in range(500)}
    job = server.post("/release_task", json={"prompt": "ok", "audio_duration": 6, "batch_size": 1} | unknown)
    assert job.status_code == 200, job.text[:300]
    warning = job.json()["data"]["warnings"][0]
    assert warning.startswith("ignored") and "more" in warning and len(warning) < 4000
    # The job itself runs.
    entry = server.wait(job.json()["data"]["task_id"])
    assert entry["status"] == 1, entry
    assert server.client.get("/health").status_code == 200


def test_a_nul_byte_in_a_path_is_a_400(server):
    for route in ("/v1/lora/load", "/v1/lora/unload"):
        response = server.post(route, json={"lora_path": "adapter\x00.safetensors"})
        assert response.status_code == 400, (route, response.status_code, response.text)
        assert "NUL" in detail(response)
    source = server.post("/release_task", json={"task_type": "cover", "src_audio_path": "/tmp/a\x00.wav"})
    assert source.status_code == 400 and "NUL" in detail(source)
    nul = mcp_call(server, "load_lora", {"name": "adapter\x00"})
    assert nul["isError"] and "adapter name" in nul["content"][0]["text"]
    assert server.client.get("/health").status_code == 200


# -- item 6: waits for the running job ------------------------------------------------------------


def mcp_call(server: Server, tool: str, arguments: dict, timeout: float = 60) -> dict:
    """One tools/call over the stateless streamable HTTP transport; the result object."""
    response = httpx.post(
        f"http://127.0.0.1:{server.port}/mcp/",
        json=_call(tool, arguments),
        headers=MCP_HEADERS,
        timeout=timeout,
        trust_env=False,
    )
    assert response.status_code == 200, response.text
    data = next(line for line in response.text.splitlines() if line.startswith("data:"))
    return json.loads(data.removeprefix("data:"))["result"]


MCP_HEADERS = {
    "Authorization": f"Bearer {KEY}",
    "Accept": "application/json, text/event-stream",
    "Content-Type": "application/json",
}


def _call(tool: str, arguments: dict, ident: int = 1) -> dict:
    params = {"name": tool, "arguments": arguments}
    return {"jsonrpc": "2.0", "id": ident, "method": "tools/call", "params": params}


async def abandon(server: Server, count: int) -> set[str]:
    """``count`` MCP unload_model calls at once, each dropped after a second (the client goes away)."""
    url = f"http://127.0.0.1:{server.port}/mcp/"
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(timeout=1.0, trust_env=False, limits=limits) as client:
        calls = [client.post(url, json=_call("unload_model", {"level": "free"}, i), headers=MCP_HEADERS)
                 for i in range(count)]  # fmt: skip
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
    return {type(outcome).__name__ for outcome in outcomes}


def timed(call) -> tuple[float, object]:
    started = time.monotonic()
    result = call()
    return time.monotonic() - started, result


def unload_reports(memory: dict) -> list:
    return [report for report in memory["last_reports"] if report["action"] in ("park", "free")]


def start_long_job(server: Server) -> str:
    """Queue LONG_JOB and return its id once it is denoising (the worker is then busy for minutes)."""
    task = server.release(json=LONG_JOB)
    deadline = time.monotonic() + 120
    while (entry := server.query(task))["stage"] != "diffusion":
        assert time.monotonic() < deadline and entry["status"] == 0, entry
        time.sleep(0.1)
    return task


def test_abandoned_waits_starve_nothing_and_every_wait_is_bounded(server):
    before = server.get("/v1/memory").json()["data"]
    unloads, reports = before["worker"]["unloads"], unload_reports(before)
    task = start_long_job(server)
    try:
        outcomes = asyncio.run(abandon(server, ABANDONED))
        assert outcomes == {"ReadTimeout"}  # every one was still waiting for the job
        health_s, health = timed(lambda: server.client.get("/health", timeout=PROMPT_S))
        stats_s, stats = timed(lambda: server.get("/v1/stats", timeout=PROMPT_S))
        status_s, status = timed(lambda: mcp_call(server, "get_status", {}, timeout=PROMPT_S))
        print(f"\nwith {ABANDONED} abandoned waits: /health {health_s * 1000:.0f} ms, /v1/stats "
              f"{stats_s * 1000:.0f} ms, MCP get_status {status_s * 1000:.0f} ms")  # fmt: skip
        assert health.status_code == 200 and stats.status_code == 200 and not status["isError"]
        assert json.loads(status["content"][0]["text"])["queue"]["jobs"]["running"] == 1
        # A wait that outlives the limit is refused with the reason, in every face; nothing is done.
        unload_s, unload = timed(lambda: server.post("/unload", json={"level": "free"}, timeout=60))
        assert unload.status_code == 503 and task in detail(unload) and "withdrawn" in detail(unload)
        load = server.post("/v1/load", timeout=60)
        assert load.status_code == 503 and "has not finished" in detail(load)
        tool = mcp_call(server, "unload_model", {"level": "park"})
        assert tool["isError"] and task in tool["content"][0]["text"]
        print(f"REST /unload refused after {unload_s:.1f} s (ACESTEP_CONTROL_TIMEOUT={WAIT_LIMIT_S})")
        assert unload_s >= WAIT_LIMIT_S - 1
    finally:
        server.post("/v1/cancel", json={"task_id": task}, timeout=60)
    assert server.wait(task)["status"] == 2
    # None of the abandoned or refused commands ran once the job had ended: they were withdrawn.
    time.sleep(1)
    memory = server.get("/v1/memory").json()["data"]
    assert memory["worker"]["unloads"] == unloads
    assert unload_reports(memory) == reports


def test_an_abandoned_rest_command_is_withdrawn_when_its_client_leaves(server):
    """FastAPI does not cancel a handler whose client left: the REST routes watch for it, so an
    unload whose client went away does not run when the job ends (nor hold a command thread)."""
    before = server.get("/v1/memory").json()["data"]["worker"]["unloads"]
    task = start_long_job(server)
    try:
        for _ in range(3):
            with pytest.raises(httpx.ReadTimeout):
                server.post("/unload", json={"level": "free"}, timeout=1.0)
        time.sleep(1.0)  # well inside ACESTEP_CONTROL_TIMEOUT: only the client's leaving withdraws
    finally:
        server.post("/v1/cancel", json={"task_id": task}, timeout=60)
    assert server.wait(task)["status"] == 2
    time.sleep(1)
    assert server.get("/v1/memory").json()["data"]["worker"]["unloads"] == before
