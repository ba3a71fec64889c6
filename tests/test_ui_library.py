"""The Library tab, the queue panel and a right-to-left language, in Debian's headless Chromium
against a real `acestep --enable-api` with a tiny checkpoint. One job is run on a first server,
which is then stopped; a second server on the same folders (in Hebrew) serves every test here, so
the library that each test reads is the one a restart left. Screenshots go to test-artifacts/."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import pytest
import soundfile as sf
from _browser import launch, shot
from _server import Server
from playwright.sync_api import Page, expect, sync_playwright

from acestep.testing import synthetic_audio
from acestep.ui.i18n import strings

HEBREW = strings("he")
JOB = {"task_type": "cover", "caption": "dusty piano ballad", "bpm": "93", "seed": "4321",
       "inference_steps": "2", "batch_size": "1", "audio_format": "wav"}  # fmt: skip
SOURCE_SECONDS = 2.0


@pytest.fixture(scope="module")
def restarted(upstream_base, tmp_path_factory):
    """(server, browser, job id): the job ran on a server that has since stopped."""
    workdir = tmp_path_factory.mktemp("library")
    source = io.BytesIO()
    sf.write(source, synthetic_audio(SOURCE_SECONDS, seed=3), 48000, format="WAV", subtype="PCM_16")
    first = Server(upstream_base, workdir, ui=True, ACESTEP_API_KEY="")
    try:
        response = first.post("/release_task", data=JOB, files={"src_audio": ("song.wav", source.getvalue())})
        assert response.status_code == 200, response.text
        job_id = response.json()["data"]["task_id"]
        assert first.wait(job_id)["status"] == 1
    finally:
        first.stop()
    server = Server(upstream_base, workdir, ui=True, flags=("--language", "he"), ACESTEP_API_KEY="")
    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield server, browser, job_id
        browser.close()
    server.stop()


def open_library(page: Page, base: str) -> None:
    page.goto(base)
    page.get_by_role("tab", name=HEBREW["tab_library"]).click()


def table_row(page: Page, table: str, text: str):
    """A shown row of a Gradio 6 table (grid rows of cells; its <table> copy is hidden)."""
    return page.locator(f"#{table} [role=row]").filter(has_text=text)


def library_row(page: Page, job_id: str):
    return table_row(page, "library-table", job_id)


def test_history_survives_a_restart_restores_rates_and_deletes(restarted):
    server, browser, job_id = restarted
    base = f"http://127.0.0.1:{server.port}"
    folder = server.results / job_id
    page = browser.new_page()
    open_library(page, base)
    row = library_row(page, job_id)
    expect(row).to_have_count(1, timeout=30_000)
    expect(row).to_contain_text("4321")  # its seed
    expect(row).to_contain_text("cover")
    row.get_by_role("gridcell").filter(has_text="4321").click()
    expect(page.locator("#library-seeds textarea")).to_have_value("4321", timeout=30_000)
    request = json.loads(page.locator("#library-request textarea").input_value())
    assert request["caption"] == JOB["caption"] and request["bpm"] == 93
    assert Path(request["src_audio"]).parent == folder  # the job's own copy of its upload
    expect(
        page.locator("#library-audio-0 audio, #library-audio-0 .waveform-container").first
    ).to_be_attached()

    page.locator("#library-rating label").filter(has_text="4").click()
    deadline = time.monotonic() + 30
    while json.loads((folder / "job.json").read_text())["rating"] != 4:
        assert time.monotonic() < deadline, "the rating was not saved"
        time.sleep(0.1)
    page.locator("#library-refresh").click()
    rated = library_row(page, job_id).get_by_role("gridcell").filter(has_text=re.compile(r"^\s*4\s*$"))
    expect(rated).to_have_count(1, timeout=30_000)
    shot(page, "library-selected")

    page.locator("#library-restore").click()
    generate = page.locator("[role=tab][aria-selected=true]")
    expect(generate).to_have_text(HEBREW["tab_generate"], timeout=30_000)
    expect(page.locator("#gen-caption textarea")).to_have_value(JOB["caption"])
    expect(page.locator("#gen-seed input")).to_have_value("4321")
    page.locator("#gen-metadata").get_by_text(HEBREW["metadata_title"]).click()  # a closed accordion
    expect(page.locator("#gen-bpm input")).to_have_value("93")
    expect(page.locator("#gen-source audio, #gen-source .waveform-container").first).to_be_attached()
    shot(page, "library-restored")

    open_library(page, base)
    library_row(page, job_id).get_by_role("gridcell").filter(has_text="4321").click()
    expect(page.locator("#library-seeds textarea")).to_have_value("4321", timeout=30_000)
    page.locator("#library-delete").click()  # not confirmed: refused, nothing removed
    expect(page.locator(".toast-body").filter(has_text=HEBREW["library_need_confirm"])).to_be_visible()
    assert folder.is_dir()
    page.locator("#library-confirm input").check()
    page.locator("#library-delete").click()
    expect(library_row(page, job_id)).to_have_count(0, timeout=30_000)
    assert not folder.exists()
    page.close()


def test_cancel_from_the_queue_panel(restarted):
    server, browser, _ = restarted
    base = f"http://127.0.0.1:{server.port}"
    long = {"task_type": "text2music", "caption": "long", "audio_duration": "60", "inference_steps": "200"}
    running = server.release(json=long)
    queued = server.release(json=long | {"caption": "waiting"})
    page = browser.new_page()
    page.goto(base)
    row = table_row(page, "queue-table", queued)
    expect(row).to_have_count(1, timeout=30_000)  # the timer brought it in
    row.get_by_role("gridcell").filter(has_text=queued).click()
    expect(page.locator("#queue-job input, #queue-job textarea").first).to_have_value(queued)
    shot(page, "queue-listed")
    page.locator("#queue-cancel").click()
    expect(page.locator("#queue-outcome")).to_contain_text("cancelled", timeout=30_000)
    entry = server.query(queued)
    assert entry["status"] == 2 and "cancelled by request" in entry["error"]
    expect(table_row(page, "queue-table", queued)).to_have_count(0, timeout=30_000)
    shot(page, "queue-cancelled")
    # The running job too: it stops at its next progress report.
    page.locator("#queue-job input, #queue-job textarea").first.fill(running)
    page.locator("#queue-cancel").click()
    expect(page.locator("#queue-outcome")).to_contain_text(running, timeout=30_000)
    finished = server.wait(running, timeout=120)
    assert finished["status"] == 2 and "cancel" in finished["error"]
    page.close()


def test_a_right_to_left_language(restarted):
    server, browser, _ = restarted
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{server.port}")
    expect(page.locator("html")).to_have_attribute("dir", "rtl", timeout=30_000)
    assert page.locator("html").get_attribute("lang") == "he"
    assert HEBREW["tab_library"] != strings("en")["tab_library"]
    expect(page.get_by_role("tab", name=HEBREW["tab_library"])).to_be_visible()
    expect(page.locator("#random-sample")).to_have_text(HEBREW["random_sample"])
    label = page.locator("#gen-caption [data-testid=block-info]")  # Gradio marks each block ltr
    assert label.evaluate("e => getComputedStyle(e).direction") == "rtl"
    assert page.locator("#gen-seed input").evaluate("e => getComputedStyle(e).direction") == "ltr"
    shot(page, "rtl-hebrew")
    page.close()


def test_every_language_file_has_every_english_key():
    from acestep.ui.i18n import LANGUAGES, STRINGS

    english = json.loads((STRINGS / "en.json").read_text(encoding="utf-8"))
    for language in LANGUAGES:
        table = json.loads((STRINGS / f"{language}.json").read_text(encoding="utf-8"))
        assert set(table) == set(english), (language, set(english) ^ set(table))
        assert all(isinstance(v, str) and v.strip() for v in table.values()), language
        if language != "en":  # translated, not copied (titles and names may stay)
            same = [k for k in english if table[k] == english[k]]
            assert len(same) < len(english) / 4, (language, same)
