"""The Training tab in headless Chromium against a real `acestep --enable-api` with a tiny base
checkpoint: upload a dataset, edit a caption, save, preprocess, train a small LoRA, watch its loss
plot, hand the adapter to the Lego tab and generate a stem with it. Without ACESTEP_TRAINING the
tab is not there."""

from __future__ import annotations

import json
import time

import pytest
import soundfile as sf
from _browser import launch, shot
from _server import Server
from playwright.sync_api import Page, expect, sync_playwright
from test_ui_browser import wait_for_stem

from acestep.testing import synthetic_audio

TRACKS = 3
CAPTION = "warm synth pad, slow"
# A run that takes seconds on a CPU: 3 tracks, 2 epochs, one update per track.
SETTINGS = {
    "lora-rank": "4",
    "train-epochs": "2",
    "gradient-accumulation": "1",
    "crop-seconds": "2",
    "warmup-steps": "0",
}


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def ui(upstream_base, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ui_training")
    files = workdir / "upload"
    files.mkdir()
    for seed in range(TRACKS):
        sf.write(files / f"take{seed}.wav", synthetic_audio(3.0, seed=seed), 48000, subtype="PCM_16")
    (files / "take0.txt").write_text("[verse]\nla la la\n")  # a lyrics sidecar, uploaded with its track
    (files / "broken.wav").write_bytes(b"%PDF-1.4 named as audio")
    server = Server(
        upstream_base,
        workdir,
        ui=True,
        ACESTEP_API_KEY="",
        ACESTEP_TRAINING="on",
        ACESTEP_TRAINING_DIR=str(workdir / "training"),
        ACESTEP_LORA_DIR=str(workdir / "loras"),
    )
    yield server, workdir
    server.stop()


def status(page: Page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} textarea").input_value()


def wait_for_status(page: Page, elem_id: str, timeout_s: float = 120) -> list[str]:
    """Every status line shown until the run ends (Done, Stopped or Failed)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = status(page, elem_id)
        if line and (not seen or seen[-1] != line):
            seen.append(line)
        if line.startswith(("Done", "Stopped", "Failed")):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"no end after {timeout_s} s; seen: {seen}")


def edit_cell(page: Page, row: int, column: int, value: str) -> None:
    cell = page.locator(f"#train-table [data-testid=cell-{row}-{column}]")
    cell.dblclick()
    cell.locator("textarea").fill(value)
    page.keyboard.press("Enter")
    expect(cell).to_contain_text(value)


def test_dataset_to_adapter_to_stem(ui, browser):
    server, workdir = ui
    base = f"http://127.0.0.1:{server.port}"
    training = workdir / "training"
    page = browser.new_page()
    page.goto(base)
    page.get_by_role("tab", name="Training").click()

    # Dataset: upload the tracks (and a file that is not the audio its name says) into "tiny".
    uploads = sorted((workdir / "upload").iterdir())
    page.locator("#train-upload input[type=file]").set_input_files([str(p) for p in uploads])
    page.locator("#train-new-name textarea").fill("tiny")
    page.locator("#train-create").click()
    summary = page.locator("#train-dataset-summary")
    expect(summary).to_contain_text(f"{TRACKS} samples", timeout=60_000)
    expect(page.locator("#train-problems")).to_contain_text("broken.wav")  # the file left out, and why
    expect(page.locator("#train-problems")).to_contain_text("not WAV, FLAC, MP3 or OGG audio")
    assert sorted(p.name for p in (training / "tiny").iterdir()) == [
        "take0.txt", "take0.wav", "take1.wav", "take2.wav"
    ]  # fmt: skip
    table = page.locator("#train-table")
    expect(table).to_contain_text("la la la")  # the lyrics sidecar was read

    edit_cell(page, 1, 1, CAPTION)  # take1's caption
    page.locator("#train-save").click()
    expect(page.locator("#train-dataset-status textarea")).to_have_value(
        f"Saved: {(training / 'tiny' / 'dataset.json').resolve()} (1 samples changed)", timeout=30_000
    )
    expect(summary).to_contain_text("1 with a caption")
    saved = json.loads((training / "tiny" / "dataset.json").read_text())
    captions = {s["name"]: s["caption"] for s in saved["samples"]}
    assert captions == {"take0": "", "take1": CAPTION, "take2": ""}
    assert json.loads((training / "tiny" / "take1.json").read_text())["caption"] == CAPTION  # sidecar

    page.locator("#train-preprocess").click()
    seen = wait_for_status(page, "train-dataset-status")
    assert seen[-1].startswith("Done: 3 samples"), seen
    assert "computed: vae 3, text 3, condition 3" in seen[-1], seen
    shot(page, "training-dataset")

    # Train: the dataset just saved is preselected; tiny settings.
    page.get_by_role("tab", name="Train", exact=True).click()
    expect(page.locator("#train-dataset input")).to_have_value("tiny")
    for name, value in SETTINGS.items():
        page.locator(f"#train-{name} input").fill(value)
    page.locator("#train-start").click()
    seen = wait_for_status(page, "train-status")
    assert seen[-1].startswith("Done: adapter tiny-lora · step 6/6 · loss "), seen
    # The loss plot: a line through one point per update, on a numeric step axis.
    plot = page.locator("#train-loss")
    expect(plot.locator("[aria-roledescription=point]")).to_have_count(6, timeout=10_000)
    expect(plot.locator("[aria-roledescription='line mark']")).to_have_count(1)
    axis = plot.locator("[aria-roledescription=axis]").first
    expect(axis).to_have_attribute(
        "aria-label", "X-axis titled 'step' for a linear scale with values from 1 to 6"
    )
    points = plot.locator("[aria-roledescription=point]").evaluate_all("ps => ps.map(p => p.ariaLabel)")
    assert all(label.startswith(f"step: {i + 1}; loss: ") for i, label in enumerate(points)), points
    checkpoints = page.locator("#train-checkpoints")
    expect(checkpoints).to_contain_text(f"Checkpoints: 6 ({(training / 'runs' / 'tiny-lora').resolve()})")
    expect(checkpoints).to_contain_text("reused: vae 3, text 3, condition 3")  # the preprocessed cache
    shot(page, "training-run")

    # The same run name again, without resume: refused, with the reason.
    page.locator("#train-start").click()
    expect(page.locator(".toast-body").filter(has_text="already has checkpoints")).to_be_visible()

    # Hand the adapter over and make a stem with it.
    page.locator("#train-use").click()
    expect(page.locator("#train-use-note")).to_contain_text("tiny-lora")
    page.get_by_role("tab", name="Lego / Stems").click()
    picked = page.locator("#lego-lora")
    expect(picked).to_contain_text("tiny-lora")
    page.locator("#lego-source input[type=file]").set_input_files(str(workdir / "upload" / "take2.wav"))
    page.locator("#lego-source audio, #lego-source .waveform-container, #lego-source button").first.wait_for()
    page.locator("#lego-seed input").fill("4")
    page.locator("#lego-run").click()
    url, _ = wait_for_stem(page)
    assert url and "Done" in status(page, "lego-progress")
    assert "LoRA: tiny-lora x1" in status(page, "lego-progress")  # the stem says what it ran with
    adapters = server.get("/v1/memory").json()["data"]["adapters"]
    assert adapters["active"] == [{"name": "tiny-lora", "scale": 1.0}]  # the stem was made with it
    page.get_by_role("tab", name="Memory").click()
    page.locator("#memory-refresh").click()
    expect(page.locator("#memory-status")).to_contain_text("LoRA: tiny-lora x1")
    shot(page, "training-lego")
    page.close()


def test_the_tab_is_absent_without_training(upstream_base, tmp_path, browser):
    server = Server(upstream_base, tmp_path, ui=True, ACESTEP_API_KEY="")  # ACESTEP_TRAINING off
    try:
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{server.port}")
        expect(page.get_by_role("tab", name="LoRA")).to_be_visible()
        expect(page.get_by_role("tab", name="Training")).to_have_count(0)
        page.close()
    finally:
        server.stop()


def test_the_status_line_of_a_run_in_training():
    from acestep.training.progress import TrainingProgress
    from acestep.training.request import TrainingRequest
    from acestep.ui.i18n import strings
    from acestep.ui.training_run import run_line
    from acestep.worker.job import JobInfo, JobState

    progress = TrainingProgress(
        stage="train", step=3, total_steps=6, epoch=1, epochs=2, loss=0.51234, learning_rate=5e-5, eta_s=75
    )
    job = JobInfo(id="x", request=TrainingRequest(dataset="tiny"), state=JobState.RUNNING, training=progress)
    assert (
        run_line(job, strings("en")) == "train · step 3/6 · epoch 1/2 · loss 0.5123 · lr 5.00e-05 · ETA 1:15"
    )
    progress.stage, progress.fraction = "preprocess_vae", 0.5
    progress.preprocess = {"computed": {"vae": 1}, "reused": {"vae": 2}}
    assert run_line(job, strings("en")) == "preprocess_vae 50% · computed: vae 1 · reused: vae 2"


def test_table_edits_are_checked_together(tmp_path):
    """A refused cell names its row and reason, and nothing is changed; good edits apply."""
    import gradio as gr

    from acestep.training.dataset import scan
    from acestep.ui.training_dataset import apply_rows, rows

    for seed in range(2):
        sf.write(tmp_path / f"take{seed}.wav", synthetic_audio(2.0, seed=seed), 48000, subtype="PCM_16")
    dataset = scan(tmp_path)
    table = rows(dataset)
    table[0][1], table[1][3] = "new caption", 5  # take1's bpm is out of range
    with pytest.raises(gr.Error, match=r"nothing was saved: take1: bpm 5 is outside 30-300"):
        apply_rows(dataset, table)
    assert dataset.sample("take0").caption == ""
    table[1][3], table[1][2] = 96.0, "[verse]\nsung now"
    assert apply_rows(dataset, table) == 2
    sung = dataset.sample("take1")
    assert (sung.bpm, sung.lyrics, sung.is_instrumental) == (96, "[verse]\nsung now", False)
    assert dataset.sample("take0").caption == "new caption"
