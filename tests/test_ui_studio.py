"""The Generate tab's studio in Debian's headless Chromium (Playwright) against a real
`acestep --enable-api` on 127.0.0.1 with the tiny base checkpoint (it runs all seven tasks): every
task from the task selector to a result player with its spectrogram, send-to chaining
(text2music -> lego -> extract, each run's source the previous result), and a lego result's mixed
preview and A/B switch. One server, one page; 3 s of audio and 2 steps a run. Screenshots go to
test-artifacts/ (studio-*.png)."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import soundfile as sf
from _browser import launch, shot
from _server import Server
from playwright.sync_api import Page, expect, sync_playwright

from acestep.testing import synthetic_audio

SECONDS = 3


@pytest.fixture(scope="module")
def studio(upstream_base, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("studio")
    server = Server(upstream_base, workdir, ui=True, ACESTEP_API_KEY="")
    source = workdir / "song.wav"
    sf.write(source, synthetic_audio(SECONDS, seed=3), 48000, subtype="PCM_16")
    with sync_playwright() as playwright:
        browser = launch(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        base = f"http://127.0.0.1:{server.port}"
        page.goto(base)
        fill(page, "steps", "2")
        fill(page, "duration", str(SECONDS))
        fill(page, "caption", "a short calm piano line")
        yield page, base, source
        browser.close()
    server.stop()


def fill(page: Page, field: str, value: str) -> None:
    box = page.locator(f"#gen-{field} input[type=number], #gen-{field} textarea, #gen-{field} input").first
    box.fill(value)
    box.press("Tab")


def choose(page: Page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").first.click()
    page.locator(f"#{elem_id} [role=option][aria-label='{option}']").click()
    page.locator(f"#{elem_id} input").first.press("Escape")


def fetch(page: Page, base: str, url: str) -> bytes:
    response = page.request.get(url if url.startswith("http") else base + url)
    assert response.ok, url
    return response.body()


def run(page: Page, task: str, seed: int, timeout_s: float = 240) -> str:
    """Run the studio's task with ``seed``; the first result's file URL once its group shows
    this task and seed."""
    fill(page, "seed", str(seed))
    page.locator("#gen-run").click()
    meta, link = page.locator("#gen-meta-0"), page.locator("#gen-audio-0 [data-testid=download-link]")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        shown = meta.inner_text() if meta.is_visible() else ""
        if f"seed {seed}" in shown and task in shown and link.count() and link.first.get_attribute("href"):
            return link.first.get_attribute("href")
        errors = page.locator(".toast-body")
        if errors.count():
            raise AssertionError(f"{task}: {errors.first.inner_text()}")
        time.sleep(0.1)
    shot(page, f"studio-timeout-{task}")
    raise AssertionError(
        f"{task}: no result; progress: {page.locator('#gen-progress textarea').input_value()}"
    )


def send(page: Page, target: str) -> None:
    choose(page, "gen-send-target-0", target)
    page.locator("#gen-send-0").click()
    page.wait_for_function(
        "task => document.querySelector('#gen-task input').value === task", arg=target, timeout=30_000
    )


def source_bytes(page: Page, base: str) -> bytes:
    """The file the studio's source player holds."""
    link = page.locator("#gen-source [data-testid=download-link], #gen-source a[download]").first
    link.wait_for(state="attached")
    return fetch(page, base, link.get_attribute("href"))


def test_results_chain_through_send_to_with_a_mixed_preview(studio):
    page, base, _ = studio
    choose(page, "gen-task", "text2music")  # the page is the module's: another test may have moved it
    first = fetch(page, base, run(page, "text2music", 11))
    spectrum = page.locator("#gen-spectrogram-0 img")
    assert spectrum.get_attribute("src"), "no spectrogram beside the player"
    assert not page.locator("#gen-ab-0").is_visible()  # A/B is for stems only
    assert not page.locator("#gen-result-1").is_visible()  # one take: one group
    shot(page, "studio-text2music")

    send(page, "lego")
    expect(page.locator("#gen-track-name")).to_be_visible()  # the task's own fields
    expect(page.locator("#gen-duration")).to_be_hidden()
    assert source_bytes(page, base) == first  # the result is now the source
    stem_url = run(page, "lego", 12)
    stem = fetch(page, base, stem_url)
    audio, rate = sf.read(io.BytesIO(stem))
    assert rate == 48000 and audio.shape[0] == SECONDS * 48000  # as long as its source

    view = page.locator("#gen-ab-0")
    assert view.is_visible()
    view.get_by_text("Mix (stem + source)").click()
    link = page.locator("#gen-audio-0 [data-testid=download-link]")
    page.wait_for_function(
        "url => { const a = document.querySelector('#gen-audio-0 [data-testid=download-link]');"
        " return a && a.getAttribute('href') && a.getAttribute('href') !== url; }",
        arg=stem_url,
    )
    mixed, _ = sf.read(io.BytesIO(fetch(page, base, link.get_attribute("href"))))
    assert mixed.shape == audio.shape and not np.allclose(mixed, audio, atol=1e-3)  # the source is in it
    page.locator("#gen-audio-0 #duration").filter(has_text=f"0:{SECONDS:02d}").wait_for(timeout=60_000)
    page.locator("#gen-audio-0 button[aria-label=Play]").click()
    page.locator("#gen-audio-0 #time").filter(has_text="0:01").wait_for(timeout=30_000)  # it plays
    shot(page, "studio-lego-mix")

    view.get_by_text("Stem", exact=True).click()
    page.wait_for_function(
        "url => document.querySelector('#gen-audio-0 [data-testid=download-link]')"
        ".getAttribute('href') === url",
        arg=stem_url,
    )
    send(page, "extract")
    assert source_bytes(page, base) == stem  # the stem, as the A/B switch played it
    choose(page, "gen-track-name", "vocals")
    run(page, "extract", 13)
    assert page.locator("#gen-spectrogram-0 img").get_attribute("src")
    assert page.locator("#gen-ab-0").is_visible()
    shot(page, "studio-extract")


@pytest.mark.parametrize("task", ["cover", "cover-nofsq", "repaint", "complete"])
def test_every_other_task_runs_from_the_selector(studio, task):
    page, base, source = studio
    choose(page, "gen-task", task)
    if not page.locator("#gen-source .waveform-container").count():  # run alone: nothing sent here
        page.locator("#gen-source input[type=file]").set_input_files(str(source))
        page.locator("#gen-source .waveform-container").first.wait_for()
    shown = {"cover-strength": task.startswith("cover"), "repainting-start": task == "repaint"}
    for field, visible in (shown | {"track-classes": task == "complete", "track-name": False}).items():
        box = expect(page.locator(f"#gen-{field}"))
        box.to_be_visible() if visible else box.to_be_hidden()
    if task == "repaint":
        fill(page, "repainting-start", "1")
        fill(page, "repainting-end", "2")
    if task == "complete":
        choose(page, "gen-track-classes", "drums")
    run(page, task, 20 + len(task))
    assert page.locator("#gen-spectrogram-0 img").get_attribute("src")
    shot(page, f"studio-{task}")


def test_the_spectrogram_puts_a_tone_in_its_row_and_silence_in_the_dark(tmp_path):
    from acestep.ui import spectrogram

    times = np.arange(48000) / 48000
    tone, quiet = tmp_path / "tone.wav", tmp_path / "quiet.wav"
    sf.write(tone, np.stack([0.5 * np.sin(2 * np.pi * 440 * times)] * 2, axis=1), 48000)
    sf.write(quiet, np.zeros((48000, 2)), 48000)
    picture = spectrogram.image(tone)
    assert picture.shape == (spectrogram.HEIGHT, spectrogram.WIDTH, 3) and picture.dtype == np.uint8
    edges = np.geomspace(spectrogram.LOWEST_HZ, 24000, spectrogram.HEIGHT + 1)
    brightest = spectrogram.HEIGHT - 1 - int(picture.mean(axis=(1, 2)).argmax())  # rows run top-down
    assert edges[brightest] <= 440 <= edges[brightest + 1] * 1.1
    assert spectrogram.image(quiet).max() < 16  # near black, not stretched
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    assert spectrogram.image(tmp_path / "bad.wav") is None


def test_the_mix_matches_levels_and_fits_the_source_to_the_stem(tmp_path):
    from acestep.ui import mixdown

    rng = np.random.default_rng(0)
    stem = 0.01 * rng.standard_normal((48000, 2))  # quiet stem, stereo, 48 kHz
    source = 0.5 * rng.standard_normal((22050 // 2, 1))  # loud source, mono, 44.1 kHz, 0.25 s
    sf.write(tmp_path / "stem.wav", stem, 48000, subtype="FLOAT")
    sf.write(tmp_path / "song.wav", source, 44100, subtype="FLOAT")
    written = mixdown.write_mix(tmp_path / "stem.wav", tmp_path / "song.wav")
    assert written == tmp_path / f"stem{mixdown.MIX_SUFFIX}"
    mixed, rate = sf.read(written, always_2d=True)
    assert rate == 48000 and mixed.shape == stem.shape and np.abs(mixed).max() <= mixdown.PEAK + 1e-4
    tail = mixed[12000:]  # past the source's end: the stem alone, brought up to the target level
    assert np.sqrt(np.mean(tail**2)) == pytest.approx(mixdown.TARGET_RMS, rel=0.05)
    head = mixed[: 11000 * 48000 // 44100]  # both, each at the target: louder than either
    assert np.sqrt(np.mean(head**2)) > 1.2 * mixdown.TARGET_RMS
    assert mixdown.write_mix(tmp_path / "stem.wav", tmp_path / "missing.wav") is None
