"""Issue 22's sampler and edit fields, end to end through a real `acestep --enable-api` on
127.0.0.1 with a tiny checkpoint: set in the UI in Debian's headless Chromium, and sent as an MCP
tool call over streamable HTTP.

No face reports the engine's ``metas`` (steps, timesteps, retake seeds), so what a face carried is
read from its audio: the same request and seeds give the same bytes (WAV float, written without a
time stamp), and the fields move the audio. A face that dropped a field would match the job
without it, not the REST job that sends it.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time

import numpy as np
import pytest
import soundfile as sf
from _browser import launch, shot
from _mcp import http_session
from _server import Server
from playwright.sync_api import Page, sync_playwright

# Short and cheap; two steps so that Heun's corrector runs (a last step to t = 0 is Euler's).
SONG = {"caption": "a calm piano line", "audio_duration": 2.0, "seed": 4, "inference_steps": 2}
RETAKE = {"retake_seed": 9, "retake_variance": 0.5}


@pytest.fixture(scope="module")
def server(upstream_base, tmp_path_factory):
    """The UI with the REST API and the MCP tools on one port, no key (the browser needs none)."""
    srv = Server(upstream_base, tmp_path_factory.mktemp("faces"), ui=True, ACESTEP_API_KEY="")
    yield srv
    srv.stop()


@pytest.fixture
def browser():
    """Per test: sync Playwright holds an event loop while it runs, which the MCP client's needs."""
    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


def rest_audio(server: Server, fields: dict) -> tuple[bytes, dict]:
    """A /release_task job with ``fields`` (WAV): its audio bytes and its result item."""
    # REST's own defaults are upstream's (mp3, two items): the UI's and MCP's are stated here.
    response = server.post("/release_task", json=SONG | {"audio_format": "wav", "batch_size": 1} | fields)
    assert response.status_code == 200, response.text
    entry = server.wait(response.json()["data"]["task_id"])
    assert entry["status"] == 1, entry
    item = entry["items"][0]
    return server.download(item["file"]), item


def samples(data: bytes) -> np.ndarray:
    return sf.read(io.BytesIO(data), dtype="float32")[0]


def fill(page: Page, field: str, value: str) -> None:
    """Type into a Number, Textbox or Slider control (its first text or number box) and leave it."""
    box = page.locator(f"#gen-{field} input[type=number], #gen-{field} textarea, #gen-{field} input").first
    box.fill(value)
    box.press("Tab")


def choose(page: Page, field: str, option: str) -> None:
    page.locator(f"#gen-{field} input").first.click()
    page.locator(f"#gen-{field} [role=option]").filter(has_text=option).click()


def options(page: Page, field: str) -> list[str]:
    """The choices a dropdown offers when opened (then closed again)."""
    box = page.locator(f"#gen-{field} input").first
    box.click()
    listed = page.locator(f"#gen-{field} [role=option]")
    listed.first.wait_for()
    shown = [option.get_attribute("aria-label") for option in listed.all()]
    box.press("Escape")
    box.blur()
    listed.first.wait_for(state="detached")
    return shown


def wait_for_audio(page: Page, timeout_s: float = 300) -> str:
    """The first player's file URL, once the job is done; the progress box's text otherwise."""
    deadline = time.monotonic() + timeout_s
    link = page.locator("#gen-audio-0 [data-testid=download-link]")
    while time.monotonic() < deadline:
        if link.count() and link.first.get_attribute("href"):
            return link.first.get_attribute("href")
        time.sleep(0.1)
    shot(page, "faces-sampling-timeout")
    raise AssertionError(
        f"no audio after {timeout_s} s: {page.locator('#gen-progress textarea').input_value()}"
    )


def test_the_ui_carries_the_sampler_and_the_retake(server, browser):
    base = f"http://127.0.0.1:{server.port}"
    page = browser.new_page()
    page.goto(base)
    page.get_by_role("tab", name="Generate").click()
    fill(page, "caption", SONG["caption"])
    fill(page, "duration", str(SONG["audio_duration"]))
    fill(page, "seed", str(SONG["seed"]))
    fill(page, "steps", str(SONG["inference_steps"]))

    page.get_by_text("Advanced sampling", exact=True).click()
    page.locator("#gen-sampler-mode").wait_for(state="visible")
    assert options(page, "sampler-mode") == ["euler", "heun"]
    assert {"apg_classic", "cfg", "adg"} <= set(options(page, "guidance-variant"))
    assert options(page, "dcw-enabled") == ["auto", "on", "off"]
    choose(page, "sampler-mode", "heun")

    page.get_by_text("Retake and edit", exact=True).click()
    page.locator("#gen-retake-seed").wait_for(state="visible")
    assert "balanced" in options(page, "repaint-mode")
    fill(page, "retake-seed", str(RETAKE["retake_seed"]))
    fill(page, "retake-variance", str(RETAKE["retake_variance"]))
    shot(page, "faces-sampling-set")

    before = {path.name for path in server.results.iterdir()} if server.results.exists() else set()
    page.locator("#gen-run").click()
    wait_for_audio(page)
    shot(page, "faces-sampling-done")
    progress = page.locator("#gen-progress textarea").input_value()
    assert f"seeds {SONG['seed']}" in progress, progress
    page.close()

    # The job the UI queued, read back through the REST API of the same server.
    (task_id,) = {path.name for path in server.results.iterdir()} - before
    entry = server.wait(task_id)
    assert entry["status"] == 1, entry
    ui_audio = server.download(entry["items"][0]["file"])

    sent, _ = rest_audio(server, {"sampler_mode": "heun"} | RETAKE)
    assert ui_audio == sent  # the UI sent heun and the retake, as this REST job does
    plain, _ = rest_audio(server, {})
    heun_only, _ = rest_audio(server, {"sampler_mode": "heun"})
    other_seed, _ = rest_audio(server, {"sampler_mode": "heun"} | RETAKE | {"retake_seed": 10})
    # Each field moves the audio, so matching `sent` needed every one of them.
    assert len({plain, heun_only, sent, other_seed}) == 4
    assert not np.allclose(samples(sent), samples(heun_only), atol=1e-3)


def mcp_call(server: Server, tool: str, arguments: dict):
    async def run():
        async with http_session(server) as session:
            return await session.call_tool(tool, arguments)

    return asyncio.run(asyncio.wait_for(run(), 600))


def mcp_audio(server: Server, sampling: dict) -> tuple[bytes, dict]:
    arguments = {
        "caption": SONG["caption"],
        "duration": SONG["audio_duration"],
        "seed": SONG["seed"],
        "inference_steps": SONG["inference_steps"],
        "audio_format": "wav",
        "sampling": sampling,
    }
    result = mcp_call(server, "generate_music", arguments)
    assert not result.isError, result.content
    summary = json.loads(result.content[0].text)
    (blob,) = [part.resource.blob for part in result.content[1:] if part.type == "resource"]
    return base64.b64decode(blob), summary


def test_mcp_generate_music_carries_the_sampling_object(server):
    sampling = RETAKE | {"dcw_enabled": False}
    audio, summary = mcp_audio(server, sampling)
    assert summary["seeds"] == [SONG["seed"]]
    entry = server.wait(summary["task_id"])  # the MCP job is a job of the REST queue too
    assert entry["status"] == 1 and entry["items"][0]["seed"] == SONG["seed"]

    sent, _ = rest_audio(server, sampling)
    assert audio == sent  # the tool sent the retake and dcw_enabled, as this REST job does
    assert audio == mcp_audio(server, sampling)[0]  # same call, same bytes
    other_seed, _ = mcp_audio(server, sampling | {"retake_seed": 10})
    no_retake, _ = rest_audio(server, {"dcw_enabled": False})
    assert len({audio, other_seed, no_retake}) == 3


@pytest.mark.parametrize(
    ("sampling", "field"),
    [
        ({"dcw_mode": "wide"}, "dcw_mode"),
        ({"retake_variance": 1.5}, "retake_variance"),
        ({"samplr": "x"}, "samplr"),
    ],
)
def test_mcp_refuses_a_bad_sampling_value_naming_the_field(server, sampling, field):
    arguments = {"caption": "x", "duration": 2, "inference_steps": 1, "sampling": sampling}
    result = mcp_call(server, "generate_music", arguments)
    assert result.isError
    assert field in result.content[0].text, result.content[0].text


def test_a_field_that_cannot_act_is_named_to_rest_and_mcp_clients(server):
    note = "retake_seed has no effect while retake_variance is 0"
    response = server.post("/release_task", json=SONG | {"batch_size": 1, "retake_seed": 9})
    assert response.status_code == 200, response.text
    rest_warnings = response.json()["data"]["warnings"]
    entry = server.wait(response.json()["data"]["task_id"])
    assert note in entry["items"][0]["warnings"]  # and in /query_result's result, with the engine's notes
    arguments = {"caption": "x", "duration": 2, "inference_steps": 1, "sampling": {"retake_seed": 9}}
    result = mcp_call(server, "generate_music", arguments)
    assert not result.isError, result.content
    assert note in rest_warnings, rest_warnings
    assert note in result.content[0].text, result.content[0].text
