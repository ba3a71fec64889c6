"""LoRA adapters on a real (tiny) engine: base output untouched by loading, switching and
unloading; scale 0 equals no adapter; adapter output reproduces; bad adapters refused clearly."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import save_file

from acestep import AceStep
from acestep.lora.catalog import LoraError, LoraNotFound
from acestep.request import GenerationRequest
from acestep.testing import make_tiny_lora


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    make_tiny_lora(folder / "drums", layout="diffusers", variant="base", rank=4, alpha=8, seed=1)
    make_tiny_lora(folder / "voice", layout="peft", variant="base", rank=2, seed=2)
    make_tiny_lora(folder / "bare", layout="diffusers", variant="base", rank=2, seed=3, record_variant=False)
    make_tiny_lora(folder / "fast", layout="peft", variant="turbo", rank=2, seed=4)
    make_tiny_lora(folder / "v1.5 drums", layout="peft", variant="base", rank=2, seed=5)  # "." and " "
    (folder / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    # Records no base model and has another DiT's sizes: refused when loaded, not before.
    save_file(
        {
            "transformer.layers.0.self_attn.to_q.lora_A.weight": torch.zeros(2, 64),
            "transformer.layers.0.self_attn.to_q.lora_B.weight": torch.zeros(64, 2),
        },
        str(folder / "wide.safetensors"),
    )
    return folder


def _engine(checkpoint, lora_dir, fuse: bool) -> AceStep:
    engine = AceStep.from_pretrained(checkpoint, device="cpu")
    engine.adapters.directory, engine.adapters.fuse = lora_dir, fuse
    return engine


@pytest.fixture(scope="module")
def shared_engine(upstream_base, lora_dir):
    return _engine(upstream_base, lora_dir, fuse=False)


@pytest.fixture
def engine(shared_engine):
    """The module's engine with no adapter loaded, whatever the test before it left (any order)."""
    shared_engine.adapters.unload()
    return shared_engine


def audio(engine: AceStep, tmp_path, lora=None, scale=1.0, seed: int = 7) -> np.ndarray:
    request = GenerationRequest(
        caption="tight drums",
        audio_duration=3.0,
        seed=seed,
        batch_size=1,
        inference_steps=4,
        audio_format="wav32",
        lora=lora,
        lora_scale=scale,
    )
    result = engine.generate(request, tmp_path / f"job{len(list(tmp_path.iterdir()))}")
    assert result.metas["lora"] == [{"name": n, "scale": s} for n, s in request.adapters]
    return sf.read(result.items[0].path, dtype="float32")[0]


def plain_linears(engine: AceStep) -> bool:
    """No PEFT layer left anywhere in the DiT: every attention projection a plain nn.Linear."""
    return all(
        type(module) is torch.nn.Linear
        for name, module in engine.components.transformer.named_modules()
        if name.endswith(("to_q", "to_k", "to_v", "to_out.0"))
    )


def test_base_output_survives_load_switch_and_unload(engine, tmp_path):
    before = audio(engine, tmp_path)
    drums = audio(engine, tmp_path, lora="drums")
    voice = audio(engine, tmp_path, lora="voice")
    both = audio(engine, tmp_path, lora=["drums", "voice"], scale=[0.5, 1.0])
    assert engine.placement()["lora"] == "cpu" and len(engine.adapters.loaded) == 2
    # Each adapter changes the audio, and differently; the switches left the base untouched.
    for changed in (drums, voice, both):
        assert not np.array_equal(changed, before)
    assert not np.array_equal(drums, voice) and not np.array_equal(both, voice)
    assert np.array_equal(audio(engine, tmp_path), before)  # adapters loaded but not named
    assert np.array_equal(audio(engine, tmp_path, lora="drums"), drums)  # reproduces after a switch
    assert np.array_equal(audio(engine, tmp_path, lora="drums", scale=0.0), before)
    assert engine.adapters.unload() == ["drums", "voice"]
    assert plain_linears(engine) and engine.placement()["lora"] == "unloaded"
    assert engine.adapters.status() | {"fuse": None} == {
        "loaded": [], "active": [], "bytes": 0, "fused": False, "fuse": None, "max_loaded": 4
    }  # fmt: skip
    assert np.array_equal(audio(engine, tmp_path), before)
    assert np.array_equal(audio(engine, tmp_path, lora="voice"), voice)  # reloaded from disk


def test_the_scale_scales_the_adapter(engine, tmp_path):
    before = audio(engine, tmp_path)
    half = audio(engine, tmp_path, lora="drums", scale=0.5)
    full = audio(engine, tmp_path, lora="drums", scale=1.0)
    assert 0 < np.abs(half - before).max() < np.abs(full - before).max() * 1.5
    assert not np.array_equal(half, full)
    assert np.array_equal(audio(engine, tmp_path, lora="drums", scale=0.5), half)
    engine.adapters.unload()


def test_fused_adapters_reproduce_and_restore_the_exact_base(upstream_base, lora_dir, engine, tmp_path):
    fused = _engine(upstream_base, lora_dir, fuse=True)
    before = audio(fused, tmp_path)
    assert np.array_equal(before, audio(engine, tmp_path))  # the same checkpoint, the same base
    drums = audio(fused, tmp_path, lora="drums")
    assert fused.adapters.status()["fused"] and fused.adapters.status()["bytes"] > 0
    # Fusing rounds differently from running the adapter beside the weights: close, not equal.
    runtime = audio(engine, tmp_path, lora="drums")
    assert np.allclose(drums, runtime, atol=1e-3) and not np.array_equal(drums, before)
    audio(fused, tmp_path, lora="voice")
    assert np.array_equal(audio(fused, tmp_path, lora="drums"), drums)
    assert np.array_equal(audio(fused, tmp_path), before)  # the originals copied back, not subtracted
    fused.adapters.unload()
    assert plain_linears(fused) and np.array_equal(audio(fused, tmp_path), before)
    engine.adapters.unload()


@pytest.mark.parametrize(
    ("lora", "error", "needle"),
    [
        ("nothing", LoraNotFound, "no LoRA named 'nothing'"),
        ("broken", LoraError, "not a readable safetensors file"),
        ("fast", LoraError, "trained on the turbo DiT; this model is base"),
        ("wide", LoraError, "made for another DiT"),
    ],
)
def test_bad_adapters_are_refused_and_the_engine_keeps_working(engine, tmp_path, lora, error, needle):
    before = audio(engine, tmp_path)
    with pytest.raises(error, match=needle):
        audio(engine, tmp_path, lora=lora)
    assert not engine.adapters.loaded and plain_linears(engine)
    assert np.array_equal(audio(engine, tmp_path), before)


def test_an_adapter_without_a_recorded_base_is_used(engine, tmp_path):
    before = audio(engine, tmp_path)
    assert not np.array_equal(audio(engine, tmp_path, lora="bare"), before)
    engine.adapters.unload()


def test_least_recently_used_adapters_make_room(engine, tmp_path):
    engine.adapters.max_loaded = 1
    try:
        engine.adapters.load(["drums"])
        assert engine.adapters.load(["voice"]) == ["voice"] and list(engine.adapters.loaded) == ["voice"]
        with pytest.raises(LoraError, match="in use"):
            engine.adapters.apply((("drums", 1.0), ("voice", 1.0)))
    finally:
        engine.adapters.max_loaded = 4
        engine.adapters.unload()


def test_names_with_dots_and_spaces_work(engine, tmp_path):
    before = audio(engine, tmp_path)
    dotted = audio(engine, tmp_path, lora="v1.5 drums")
    assert not np.array_equal(dotted, before)
    assert np.array_equal(audio(engine, tmp_path, lora="v1.5 drums"), dotted)
    assert engine.adapters.unload() == ["v1.5 drums"] and np.array_equal(audio(engine, tmp_path), before)


def test_captured_graphs_are_dropped_whenever_the_adapters_change(engine, tmp_path, monkeypatch):
    """Graphs replay the kernels they captured: after any load, switch or unload (also one made
    between jobs, through the runner) the next job must not replay the old ones."""
    audio(engine, tmp_path)  # settles any change made before this test (the fixture's unload)
    resets = []
    monkeypatch.setattr(engine.dit, "reset", lambda: resets.append(engine.adapters.version))
    audio(engine, tmp_path)
    audio(engine, tmp_path)
    assert resets == []  # nothing changed: graphs are kept
    audio(engine, tmp_path, lora="drums")
    assert len(resets) == 1
    audio(engine, tmp_path, lora="drums")
    assert len(resets) == 1
    engine.adapters.unload()  # between jobs, as POST /v1/lora/unload does
    audio(engine, tmp_path)
    assert len(resets) == 2
