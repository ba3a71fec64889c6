"""The Generate tab's "LM (5 Hz)" accordion in Debian's headless Chromium (Playwright) against a
real `acestep --enable-api`: a thinking generation with the tiny LM shows what the LM settled on
and plays; on a server without an LM the controls are inert and say why."""

from __future__ import annotations

import io

import pytest
import soundfile as sf
from _browser import launch, shot
from _server import Server
from gradio_client import Client
from gradio_client.exceptions import AppError
from playwright.sync_api import Browser, Page, sync_playwright

LM_ENV = {"ACESTEP_INIT_LLM": "true", "ACESTEP_API_KEY": ""}  # the cpu tier leaves the LM off by default
SECONDS = 6
LM_CONTROLS = (
    "#gen-thinking input", "#gen-cot-caption input", "#gen-cot-language input", "#gen-format input",
    "#gen-sample-query textarea", "#gen-lm-temperature input[type=range]",
    "#gen-lm-cfg-scale input[type=range]", "#gen-lm-top-p input[type=range]",
)  # fmt: skip


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


def open_lm(page: Page, base: str) -> None:
    page.goto(base)
    page.locator("#gen-lm").get_by_text("LM (5 Hz)", exact=True).click()
    page.locator("#gen-thinking input").wait_for()


def test_a_thinking_generation_shows_the_lm_plan_and_plays(lm_checkpoint, tmp_path, browser: Browser):
    server = Server(lm_checkpoint, tmp_path, ui=True, **LM_ENV)
    try:
        base = f"http://127.0.0.1:{server.port}"
        page = browser.new_page()
        open_lm(page, base)
        assert "acestep-5Hz-lm-1.7B" in page.locator("#gen-lm-status").inner_text()
        # The request's defaults and ranges.
        ranges = {
            "temperature": ("0.85", "0", "5"),
            "cfg-scale": ("2", "0", "10"),
            "top-p": ("0.9", "0.01", "1"),
        }
        for control, expected in ranges.items():
            number = page.locator(f"#gen-lm-{control} input[type=number]")
            shown = (number.input_value(), number.get_attribute("min"), number.get_attribute("max"))
            assert shown == expected, control
        assert page.locator("#gen-cot-caption input").is_checked()
        assert not page.locator("#gen-thinking input").is_checked()

        page.locator("#gen-caption textarea").fill("a tiny song")
        page.locator("#gen-duration input").fill(str(SECONDS))
        page.locator("#gen-steps input").fill("2")
        page.locator("#gen-seed input").fill("4")
        page.locator("#gen-thinking input").check()
        page.locator("#gen-cot-caption input").uncheck()
        page.locator("#gen-run").click()

        progress = page.locator("#gen-progress textarea")
        link = page.locator("#gen-audio-0 [data-testid=download-link]")
        link.wait_for(timeout=300_000)
        status = progress.input_value()
        assert status.startswith("Done: seeds 4"), status
        plan = status.splitlines()[1]
        assert plan.startswith("LM plan (acestep-5Hz-lm-1.7B): BPM: "), plan
        # cot caption off: the user's caption stands.
        parts = ("Key: ", "Time signature: ", f"Duration: {SECONDS} s", f"Audio codes: {SECONDS * 5}")
        for part in (*parts, "Caption: a tiny song"):
            assert part in plan, plan

        # The player loads the file, then plays it: its clock moves.
        page.locator("#gen-audio-0 #duration").filter(has_text=f"0:{SECONDS:02d}").wait_for(timeout=60_000)
        page.locator("#gen-audio-0 button[aria-label=Play]").click()
        page.locator("#gen-audio-0 #time").filter(has_text="0:02").wait_for(timeout=30_000)
        shot(page, "generate-lm")
        url = link.get_attribute("href")
        response = page.request.get(url if url.startswith("http") else base + url)
        audio, rate = sf.read(io.BytesIO(response.body()))
        assert rate == 48000 and audio.shape[0] == SECONDS * 48000
        page.close()
    finally:
        server.stop()


def test_without_an_lm_the_controls_are_off_and_say_why(upstream_base, tmp_path, browser: Browser):
    server = Server(upstream_base, tmp_path, ui=True, **LM_ENV)
    try:
        page = browser.new_page()
        open_lm(page, f"http://127.0.0.1:{server.port}")
        reason = page.locator("#gen-lm-status").inner_text()
        assert reason.startswith("The 5 Hz LM is not available on this server:"), reason
        assert f"no acestep-5Hz-lm-* folder in {upstream_base}" in reason, reason
        assert "acestep-download --model acestep-5Hz-lm-1.7B" in reason, reason
        for control in LM_CONTROLS:
            assert page.locator(control).is_disabled(), control
        shot(page, "generate-no-lm")
        page.close()
        # A client that calls the Generate endpoint with thinking on anyway is refused, with the
        # reason, before anything is queued.
        client = Client(f"http://127.0.0.1:{server.port}/", verbose=False)
        inputs = ["text2music", 2, 4, 1, 1, "x", "", None, 0, -1, 1, "wav"]
        lm = [True, True, True, "", False, 0.85, 2.0, 0.9]  # app.LM_FIELDS, thinking first
        with pytest.raises(AppError, match="The 5 Hz LM is not available on this server: no acestep-5Hz-lm"):
            client.predict(*inputs, *lm, api_name="/generate")
        assert server.get("/v1/stats").json()["data"]["jobs"]["total"] == 0
    finally:
        server.stop()
