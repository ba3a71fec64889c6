"""The fast DiT path: same outputs as eager, RNG untouched, eager after any failure."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _util import generate

from acestep import AceStep
from acestep.engine.fast_dit import DitRunner, fast_mode
from acestep.memory.capture import fail_next_capture


def _inputs(engine: AceStep, batch: int = 2, frames: int = 40) -> dict:
    generator = torch.Generator().manual_seed(0)
    config = engine.components.transformer.config
    dim = engine.codec.latent_dim

    def rand(*shape):
        return torch.randn(*shape, generator=generator)

    return {
        "hidden_states": rand(batch, frames, dim),
        "timestep": torch.full((batch,), 0.7),
        "timestep_r": torch.full((batch,), 0.7),
        "encoder_hidden_states": rand(batch, 12, config.hidden_size),
        "context_latents": rand(batch, frames, 2 * dim),
    }


def test_fast_mode_setting():
    assert fast_mode({}) == "off"
    assert fast_mode({"ACESTEP_DIT_FAST": " Graphs "}) == "graphs"
    assert fast_mode({"ACESTEP_DIT_FAST": "0"}) == "off"
    with pytest.raises(ValueError, match=r"ACESTEP_DIT_FAST must be one of off, compile, graphs, got 'fast'"):
        fast_mode({"ACESTEP_DIT_FAST": "fast"})


@pytest.mark.parametrize("mode", ["compile", "graphs"])  # graphs need CUDA tensors: compile only here
def test_compiled_blocks_give_eager_outputs_and_leave_the_rng_alone(engine_upstream_turbo, mode):
    transformer = engine_upstream_turbo.components.transformer
    inputs = _inputs(engine_upstream_turbo)
    with torch.inference_mode():
        eager = DitRunner(transformer, "off")(**inputs)[0]
        runner = DitRunner(transformer, mode, backend="aot_eager")
        before = torch.get_rng_state()
        fast = runner(**inputs)[0]
        assert torch.equal(torch.get_rng_state(), before)
        again = runner(**inputs)[0]
    try:
        assert runner.compiled and runner.active == mode
        assert all(block._compiled_call_impl is not None for block in transformer.layers)
        torch.testing.assert_close(fast, eager, rtol=0, atol=0)
        torch.testing.assert_close(again, eager, rtol=0, atol=0)
    finally:
        runner._fall_back()  # the session-scoped engine's blocks go back to plain forwards


def test_a_failed_compile_falls_back_to_eager_with_the_rng_restored(engine_upstream_turbo):
    transformer = engine_upstream_turbo.components.transformer
    inputs = _inputs(engine_upstream_turbo)
    runner = DitRunner(transformer, "compile", backend="aot_eager")
    fail_next_capture("compiler exploded")  # disturbs both RNGs, then raises inside the guard
    before = torch.get_rng_state()
    with torch.inference_mode():
        out = runner(**inputs)[0]
        eager = transformer(**inputs, return_dict=False)[0]
    assert torch.equal(torch.get_rng_state(), before)
    assert runner.broken and runner.active == "off" and not runner.compiled
    assert all(block._compiled_call_impl is None for block in transformer.layers)
    torch.testing.assert_close(out, eager, rtol=0, atol=0)


def test_the_engine_generates_the_same_audio_on_the_fast_path(upstream_turbo, tmp_path, monkeypatch):
    monkeypatch.setenv("ACESTEP_DIT_COMPILE_BACKEND", "aot_eager")
    request = {"caption": "x", "lyrics": "la la", "audio_duration": 4.0, "seed": 11, "batch_size": 2}
    plain = AceStep.from_pretrained(upstream_turbo, device="cpu")
    fast = AceStep.from_pretrained(upstream_turbo, device="cpu", fast="compile")
    assert plain.dit.mode == "off" and fast.dit.mode == "compile" and fast.dit.backend == "aot_eager"
    _, a = generate(plain, tmp_path / "a", **request)
    _, b = generate(fast, tmp_path / "b", **request)
    assert fast.dit.compiled and not fast.dit.broken
    np.testing.assert_array_equal(a, b)
    fast.dit._graphs[("stale",)] = object()
    fast.park()  # weights move: captured graphs would point at freed memory
    assert not fast.dit._graphs
    fast.wake()
    _, c = generate(fast, tmp_path / "c", **request)
    np.testing.assert_array_equal(a, c)


def test_the_setting_picks_the_path(upstream_turbo, monkeypatch):
    monkeypatch.setenv("ACESTEP_DIT_FAST", "graphs")
    engine = AceStep.from_pretrained(upstream_turbo, device="cpu")
    assert engine.dit.mode == "graphs"
    monkeypatch.setenv("ACESTEP_DIT_FAST", "warp")
    with pytest.raises(ValueError, match="ACESTEP_DIT_FAST"):
        AceStep.from_pretrained(upstream_turbo, device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_cuda_graphs_replay_within_tolerance_and_survive_park(upstream_turbo, tmp_path):
    request = {"caption": "x", "lyrics": "la la", "audio_duration": 8.0, "seed": 11, "batch_size": 2}
    eager = AceStep.from_pretrained(upstream_turbo, device="cuda", dtype="float32")
    fast = AceStep.from_pretrained(upstream_turbo, device="cuda", dtype="float32", fast="graphs")
    _, a = generate(eager, tmp_path / "a", **request)
    before = torch.cuda.get_rng_state()
    _, b = generate(fast, tmp_path / "b", **request)
    assert torch.equal(torch.cuda.get_rng_state(), before)
    assert fast.dit.active == "graphs" and fast.dit._graphs
    assert np.linalg.norm(b - a) / np.linalg.norm(a) < 1e-3  # fp32 tolerance (docs/performance.md)
    fast.park()
    assert not fast.dit._graphs
    fast.wake()
    _, c = generate(fast, tmp_path / "c", **request)
    np.testing.assert_allclose(c, b, rtol=0, atol=1e-5)
