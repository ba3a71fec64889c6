"""Training as a job of the GPU worker: it runs alone (the engine freed, generation queued behind
it), reports its steps and loss, crosses the worker pipe, stops with its last checkpoint kept,
and its adapter changes generation, loads through the catalog and unloads to the exact base."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from acestep import AceStep, GenerationRequest
from acestep.lora.catalog import scan as scan_catalog
from acestep.memory.keep_alive import NEVER, KeepAlivePolicy
from acestep.testing import synthetic_audio
from acestep.training import checkpoint_files
from acestep.training.request import TrainingRequest
from acestep.worker.dispatcher import Dispatcher
from acestep.worker.process import ProcessRunner
from acestep.worker.runner import EngineSpec, InProcessRunner

TINY = {"lora_rank": 4, "lora_alpha": 8, "gradient_accumulation": 1, "crop_seconds": 2, "warmup_steps": 0}


@pytest.fixture
def places(tmp_path, monkeypatch) -> dict[str, Path]:
    folders = {"training": tmp_path / "training", "loras": tmp_path / "loras"}
    monkeypatch.setenv("ACESTEP_TRAINING_DIR", str(folders["training"]))
    monkeypatch.setenv("ACESTEP_LORA_DIR", str(folders["loras"]))
    songs = folders["training"] / "songs"
    songs.mkdir(parents=True)
    for i in range(2):
        sf.write(songs / f"song{i}.wav", synthetic_audio(3.0, seed=20 + i), 48000)
    folders["songs"] = songs
    return folders


def generation(seed: int = 3, **fields) -> GenerationRequest:
    base = {"caption": "drums", "audio_duration": 3.0, "inference_steps": 4, "audio_format": "wav"}
    return GenerationRequest(**(base | fields), seed=seed)


def test_a_run_holds_the_worker_alone_and_generation_waits_behind_it(upstream_base, places, tmp_path):
    dispatcher = Dispatcher(
        InProcessRunner(EngineSpec(str(upstream_base), device="cpu")), KeepAlivePolicy(NEVER)
    )
    try:
        before = dispatcher.submit(generation(), tmp_path / "before").wait(120)
        assert before.state == "succeeded" and dispatcher.runner.state == "ready"
        request = TrainingRequest(dataset=str(places["songs"]), output_name="mine", train_epochs=3, **TINY)
        run = dispatcher.submit_training(request, str(places["songs"]))
        after = dispatcher.submit(generation(lora=["mine"]), tmp_path / "after")
        assert dispatcher.position(after.id) in (1, 2)  # behind the run
        run.wait(300)
        after.wait(120)
        assert run.state == "succeeded", run.error
        assert run.kind == "train" and run.training.adapter == "mine" and run.training.step == 6
        assert run.training.losses and run.progress == 1.0 and run.stage == "done"
        assert after.state == "succeeded", after.error
        assert after.started >= run.finished  # it waited for the run
        assert dispatcher.runner.state == "ready"  # the engine came back for it
    finally:
        dispatcher.stop()


def test_a_run_crosses_the_worker_pipe_and_a_stop_keeps_its_checkpoint(upstream_base, places):
    env = {
        "ACESTEP_DEVICE": "cpu",
        "ACESTEP_TRAINING_DIR": str(places["training"]),
        "ACESTEP_LORA_DIR": str(places["loras"]),
    }
    runner = ProcessRunner(EngineSpec(str(upstream_base), device="cpu"), env=env)
    dispatcher = Dispatcher(runner, KeepAlivePolicy(NEVER))
    try:
        request = TrainingRequest(dataset=str(places["songs"]), output_name="long", train_epochs=5000, **TINY)
        run = dispatcher.submit_training(request, str(places["songs"]))
        deadline = time.monotonic() + 240
        while not (run.training and run.training.step >= 2):  # the details crossed the pipe
            assert time.monotonic() < deadline and not run.done.is_set(), run.error
            time.sleep(0.05)
        assert run.training.stage == "train" and run.training.total_steps == 10000
        assert dispatcher.cancel(run.id) == "cancelling"
        run.wait(120)
        assert run.state == "succeeded", run.error
        assert run.training.stopped and run.training.adapter == "long"
        steps = checkpoint_files.steps(places["training"] / "runs" / "long")
        assert steps == [run.training.step]
        assert runner.alive  # stopped by the trainer, not by ending the worker
    finally:
        dispatcher.stop()


def test_the_trained_adapter_changes_generation_and_unloads_to_the_exact_base(
    upstream_base, places, tmp_path
):
    runner = InProcessRunner(EngineSpec(str(upstream_base), device="cpu"))
    dispatcher = Dispatcher(runner, KeepAlivePolicy(NEVER))
    try:
        request = TrainingRequest(
            dataset=str(places["songs"]), output_name="tuned", train_epochs=2, learning_rate=0.05, **TINY
        )
        assert dispatcher.submit_training(request, str(places["songs"])).wait(300).state == "succeeded"
    finally:
        dispatcher.stop()
    found, problems = scan_catalog(places["loras"])
    assert {"tuned", "tuned-peft"} <= set(found), problems
    assert found["tuned"].base_variant == "base" and found["tuned"].rank == 4
    engine = AceStep.from_pretrained(upstream_base, device="cpu")
    engine.adapters.directory = places["loras"]

    def render(name: str, **fields) -> np.ndarray:
        result = engine.generate(generation(**fields), tmp_path / name)
        return sf.read(result.items[0].path, dtype="float32")[0]

    base = render("base")
    tuned = render("tuned", lora=["tuned"])
    peft = render("peft", lora=["tuned-peft"])
    assert not np.array_equal(base, tuned)
    assert np.array_equal(tuned, peft)  # both formats hold the same adapter
    engine.adapters.unload()
    assert np.array_equal(render("again"), base)
