"""The Gradio UI in Debian's headless Chromium (Playwright) against a real `acestep --enable-api`
on 127.0.0.1 with a tiny checkpoint. Screenshots go to test-artifacts/ (not committed)."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
import soundfile as sf
from _browser import launch, shot
from _server import Server
from playwright.sync_api import Page, sync_playwright

from acestep.testing import synthetic_audio

SOURCE_SECONDS = 8.0


@pytest.fixture(scope="module")
def ui(upstream_base, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ui")
    server = Server(upstream_base, workdir, ui=True, ACESTEP_API_KEY="")
    source = workdir / "song.wav"
    sf.write(source, synthetic_audio(SOURCE_SECONDS, seed=8), 48000, subtype="PCM_16")
    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield server, browser, source
        browser.close()
    server.stop()


def start_lego(page: Page, base: str, source: Path) -> None:
    page.goto(base)
    page.get_by_role("tab", name="Lego / Stems").click()
    page.locator("#lego-source input[type=file]").set_input_files(str(source))
    page.locator("#lego-source audio, #lego-source .waveform-container, #lego-source button").first.wait_for()
    page.locator("#lego-bpm input").fill("120")
    page.locator("#lego-seed input").fill("4")
    page.locator("#lego-run").click()


def wait_for_stem(page: Page, timeout_s: float = 240) -> tuple[str, list[str]]:
    """Watch the progress box until the first audio player has a file; returns the file's URL and
    every progress text shown meanwhile."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    link = page.locator("#lego-audio-0 [data-testid=download-link]")
    while time.monotonic() < deadline:
        text = page.locator("#lego-progress textarea").input_value()
        if text and (not seen or seen[-1] != text):
            seen.append(text)
        if link.count() and link.first.get_attribute("href"):
            return link.first.get_attribute("href"), seen
        time.sleep(0.05)
    raise AssertionError(f"no audio after {timeout_s} s; progress seen: {seen}")


def test_lego_from_an_upload_then_free(ui):
    server, browser, source = ui
    base = f"http://127.0.0.1:{server.port}"
    page = browser.new_page()
    start_lego(page, base, source)
    url, seen = wait_for_stem(page)
    shot(page, "lego")
    percents = {s for s in seen if s.endswith("%")}
    assert len(percents) >= 2, seen  # the progress moved while the job ran
    player = page.locator("#lego-audio-0 .waveform-container")
    assert player.count() == 1  # a player, not just a link
    # The player reads the file's length once it has loaded it (asynchronously).
    expected = f"0:{int(SOURCE_SECONDS):02d}"
    page.locator("#lego-audio-0 #duration").filter(has_text=expected).wait_for(timeout=60_000)
    response = page.request.get(url if url.startswith("http") else base + url)
    assert response.ok
    audio, rate = sf.read(io.BytesIO(response.body()))
    assert rate == 48000 and audio.shape[0] == int(SOURCE_SECONDS * 48000)
    assert "Done" in page.locator("#lego-progress textarea").input_value()

    page.get_by_role("tab", name="Memory").click()
    page.locator("#memory-free").click()
    status = page.locator("#memory-status")
    status.filter(has_text="Model state: unloaded").wait_for(timeout=60_000)
    shot(page, "memory")
    # The REST API answers on the same port and agrees.
    health = page.request.get(f"{base}/health").json()["data"]
    assert health["model_state"] == "unloaded"
    page.close()


def test_two_sessions_generate_at_once(ui):
    server, browser, source = ui
    base = f"http://127.0.0.1:{server.port}"
    first, second = browser.new_context().new_page(), browser.new_context().new_page()
    before = first.request.get(f"{base}/v1/stats").json()["data"]["jobs"]["succeeded"]
    start_lego(first, base, source)
    start_lego(second, base, source)
    url_a, _ = wait_for_stem(first)
    url_b, _ = wait_for_stem(second)
    shot(second, "two-sessions")
    assert url_a and url_b
    stats = first.request.get(f"{base}/v1/stats").json()["data"]
    assert stats["jobs"]["succeeded"] == before + 2  # both sessions' jobs, whatever ran before


def test_interface_languages_come_from_files():
    from acestep.ui.i18n import LANGUAGES, strings

    english = strings("en")
    for language in LANGUAGES:
        table = strings(language)
        assert set(table) == set(english)
        if language != "en":
            assert table["tab_memory"] != english["tab_memory"]


def test_the_api_key_protects_the_ui_and_the_api(upstream_base, tmp_path):
    from _server import KEY

    server = Server(upstream_base, tmp_path, ui=True)  # ACESTEP_API_KEY=KEY
    try:
        client = server.client
        assert client.get("/v1/memory").status_code == 401
        assert server.get("/v1/memory").status_code == 200
        assert client.get("/config").status_code == 401  # the UI's own state needs a login
        assert client.post("/login", data={"username": "me", "password": "wrong"}).status_code in (400, 401)
        assert client.post("/login", data={"username": "me", "password": KEY}).status_code == 200
        assert client.get("/config").status_code == 200  # the session cookie now opens it
    finally:
        server.stop()
