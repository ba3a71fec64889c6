"""Issue 21, item 5 and the finding "Progress jumps backwards": one overall fraction with upstream's
stage bands, never going down, on /query_result and in MCP progress notifications.

The engine's own fractions restart at 0 in each stage (diffusion 88 %, then decode 0 %); the worker
places them in their bands (acestep/worker/progress.py, patches/0047).
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from _mcp import http_session
from _server import Server

from acestep.request import GenerationRequest
from acestep.worker.job import JobInfo
from acestep.worker.progress import STAGE_BANDS, TRAINING_BANDS, overall

# The engine's stages in the order a job with the LM passes them (AceStep.generate).
ORDER = ("queued", "starting", "lm", "conditioning", "diffusion", "decode", "save", "done")
LM_ENV = {"ACESTEP_INIT_LLM": "true"}  # the cpu tier leaves the LM off by default
SLOW = {"audio_duration": 4, "batch_size": 1, "inference_steps": 20, "audio_format": "wav", "seed": 2}


# --- the band table ---------------------------------------------------------------------------


def test_the_bands_follow_the_stages_in_order_and_match_upstream():
    assert set(STAGE_BANDS) == set(ORDER)
    for earlier, later in zip(ORDER, ORDER[1:], strict=False):
        start, end = STAGE_BANDS[earlier]
        assert 0.0 <= start <= end <= STAGE_BANDS[later][0] <= 1.0, (earlier, later)
    # upstream's points: LM up to 0.5, DiT from 0.51 to 0.79, decode 0.8, save 0.99, done 1.0
    assert STAGE_BANDS["lm"][1] == 0.5 and STAGE_BANDS["conditioning"][0] == 0.51
    assert STAGE_BANDS["diffusion"] == (0.52, 0.79)
    assert STAGE_BANDS["decode"][0] == 0.8 and STAGE_BANDS["save"][0] == 0.99
    assert STAGE_BANDS["done"] == (1.0, 1.0)


def test_a_training_job_has_bands_in_order_too():
    stages = list(TRAINING_BANDS)
    for earlier, later in zip(stages, stages[1:], strict=False):
        assert TRAINING_BANDS[earlier][1] <= TRAINING_BANDS[later][0], (earlier, later)
    assert overall("train", 0.5) == pytest.approx(0.53)
    assert overall("preprocess_vae", 1.0, previous=0.5) == 0.5  # never lower


def test_a_stage_fraction_lands_in_its_band():
    assert overall("diffusion", 0.0) == pytest.approx(0.52)
    assert overall("diffusion", 0.5) == pytest.approx(0.655)
    assert overall("diffusion", 1.0) == pytest.approx(0.79)
    assert overall("lm", 0.0) == pytest.approx(0.1)
    assert overall("diffusion", 7.0) == pytest.approx(0.79)  # a fraction out of [0, 1] is clamped
    assert overall("decode", 0.0) == pytest.approx(0.8)
    assert overall("done", 1.0) == 1.0


def test_the_overall_fraction_never_goes_down():
    assert overall("decode", 0.0, previous=0.9) == 0.9
    assert overall("nobody-knows", 0.3, previous=0.6) == 0.6  # an unknown stage keeps the value
    job = JobInfo(id="t", request=GenerationRequest(caption="x"))
    seen = []
    for stage, fraction in [("starting", 0), ("conditioning", 0), ("diffusion", 0.88), ("decode", 0),
                            ("conditioning", 0), ("save", 0), ("done", 1)]:  # fmt: skip
        job.advance(stage, fraction)
        seen.append(job.progress)
        assert job.stage == stage  # the stage name stays its own field
    assert seen == sorted(seen) and seen[-1] == 1.0
    assert seen[1] == pytest.approx(0.51)  # without the LM, the DiT's band starts where upstream's does
    assert seen[3] == pytest.approx(0.8) and seen[4] == pytest.approx(0.8)  # decode 0 % is not a drop


# --- through a real server --------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(lm_checkpoint, tmp_path_factory):
    srv = Server(lm_checkpoint, tmp_path_factory.mktemp("progress_api"), **LM_ENV)
    yield srv
    srv.stop()


def follow(server: Server, task_id: str, timeout: float = 300) -> list[dict]:
    """Every /query_result answer for the task, polled back to back, until it ends."""
    seen, deadline = [], time.monotonic() + timeout
    while True:
        entry = server.query(task_id)
        seen.append(entry)
        if entry["status"] != 0:
            return seen
        assert time.monotonic() < deadline, seen[-1]


def check_monotonic(seen: list[dict]) -> list[float]:
    values = [entry["progress"] for entry in seen]
    assert values == sorted(values), [(e["stage"], e["progress"]) for e in seen]
    assert seen[-1]["status"] == 1 and values[-1] == 1.0, seen[-1]
    for entry in seen:
        assert entry["stage"] in STAGE_BANDS, entry["stage"]
        if entry["status"] == 0 and entry["stage"] != "queued":
            # The stage text stays beside the fraction; the percentage is the overall one.
            assert entry["progress_text"].startswith(entry["stage"] + " "), entry["progress_text"]
            item = json.loads(entry["result"])[0]
            assert 0.0 <= item["progress"] <= 1.0 and item["stage"] in STAGE_BANDS
    return values


def test_finding_progress_is_monotonic(server):
    """Upstream's single-bar clients read ``progress`` from /query_result: with the LM and
    without it, the value never decreases across stage changes and ends at 1.0."""
    plain = follow(server, server.release(json={"prompt": "a plain song", **SLOW}))
    values = check_monotonic(plain)
    stages = {entry["stage"] for entry in plain}
    assert "lm" not in stages and "diffusion" in stages, stages
    # Without the LM it goes from "starting" (0.01) straight to the DiT's band, as upstream does.
    assert not [v for v in values if 0.01 < v < 0.51], values

    thinking = {"prompt": "a planned song", "thinking": True, "use_cot_caption": False, **SLOW}
    planned = follow(server, server.release(json=thinking))
    values = check_monotonic(planned)
    stages = [entry["stage"] for entry in planned]
    assert "lm" in stages and "diffusion" in stages, stages
    assert stages.index("lm") < stages.index("diffusion")
    lm_values = [entry["progress"] for entry in planned if entry["stage"] == "lm"]
    assert all(0.1 <= v <= 0.5 for v in lm_values), lm_values


def test_mcp_progress_notifications_are_the_same_fraction(server):
    """An MCP client that asks for progress gets the overall fraction (never lower) and the stage."""
    notes: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        notes.append((progress, total, message))

    async def run() -> None:
        async with http_session(server) as session:
            arguments = {"caption": "mcp song", "duration": 6, "inference_steps": 60, "seed": 1}
            result = await session.call_tool("generate_music", arguments, progress_callback=on_progress)
            assert not result.isError, result.content

    asyncio.run(asyncio.wait_for(run(), 600))
    values = [progress for progress, _, _ in notes]
    assert values and values == sorted(values) and values[-1] == 1.0, notes
    assert all(total == 1.0 and message in STAGE_BANDS for _, total, message in notes), notes
    assert notes[-1][2] == "done"


def test_a_failed_job_keeps_its_progress(server):
    """A job cancelled in the DiT's band fails there: its items do not drop back to 0."""
    task = server.release(json={"prompt": "a cancelled song", **SLOW})
    deadline = time.monotonic() + 300
    while (entry := server.query(task))["stage"] != "diffusion":
        assert entry["status"] == 0 and time.monotonic() < deadline, entry
    assert server.post("/v1/cancel", json={"task_id": task}).status_code == 200
    last = follow(server, task)[-1]
    assert last["status"] == 2, last
    item = json.loads(last["result"])[0]
    assert item["progress"] == last["progress"] >= entry["progress"] >= 0.52, (item, entry)
