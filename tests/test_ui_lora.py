"""The UI's LoRA parts in headless Chromium against a real `acestep --enable-api`: the LoRA tab lists
the folder's adapters with their base model and rank, a lego stem runs with a picked adapter, and
the tab's unload removes it from the model."""

from __future__ import annotations

import time

import pytest
import soundfile as sf
from _browser import launch, shot
from _server import Server
from playwright.sync_api import expect, sync_playwright
from test_ui_browser import wait_for_stem

from acestep.testing import make_tiny_lora, synthetic_audio


@pytest.fixture(scope="module")
def ui(upstream_base, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ui_lora")
    folder = workdir / "loras"
    make_tiny_lora(folder / "drums", layout="diffusers", variant="base", rank=4, seed=1)
    make_tiny_lora(folder / "fast", layout="peft", variant="turbo", rank=2, seed=2)
    server = Server(upstream_base, workdir, ui=True, ACESTEP_API_KEY="", ACESTEP_LORA_DIR=str(folder))
    source = workdir / "song.wav"
    sf.write(source, synthetic_audio(6.0, seed=8), 48000, subtype="PCM_16")
    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield server, browser, source
        browser.close()
    server.stop()


def memory(server: Server) -> dict:
    return server.get("/v1/memory").json()["data"]


def test_pick_an_adapter_for_a_stem_then_unload_it(ui):
    server, browser, source = ui
    base = f"http://127.0.0.1:{server.port}"
    page = browser.new_page()
    page.goto(base)
    page.get_by_role("tab", name="LoRA").click()
    table = page.locator("#lora-table")
    expect(table).to_contain_text("drums", timeout=30000)
    text = table.text_content()
    assert "drums" in text and "diffusers" in text and "fast" in text and "turbo" in text
    shot(page, "lora-tab")

    start = page.locator("#lego-lora input")
    page.get_by_role("tab", name="Lego / Stems").click()
    start.click()
    options = page.get_by_role("option")
    options.first.wait_for()
    assert [o.strip() for o in options.all_inner_texts()] == ["drums"]  # made for this model only
    options.first.click()
    page.keyboard.press("Escape")
    page.locator("#lego-source input[type=file]").set_input_files(str(source))
    page.locator("#lego-source audio, #lego-source .waveform-container, #lego-source button").first.wait_for()
    page.locator("#lego-bpm input").fill("120")
    page.locator("#lego-seed input").fill("4")
    page.locator("#lego-run").click()
    url, _ = wait_for_stem(page)
    assert url
    adapters = memory(server)["adapters"]
    assert [a["name"] for a in adapters["loaded"]] == ["drums"]
    assert adapters["active"] == [{"name": "drums", "scale": 1.0}]

    page.get_by_role("tab", name="LoRA").click()
    page.locator("#lora-unload").click()
    deadline = time.monotonic() + 60
    while memory(server)["adapters"]["loaded"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert memory(server)["adapters"]["loaded"] == [] and memory(server)["residency"]["lora"] == "unloaded"
    page.locator("#lora-status").get_by_text("In the model: -").wait_for()
    shot(page, "lora-unloaded")
