"""The precision policy per GPU, fp16-mixed against fp16 overflow, and the RoPE modes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _util import TARGET_GPUS, generate
from safetensors.torch import load_file, save_file

from acestep import AceStep, GenerationError
from acestep.memory.gpus import GpuInfo, StaticSource
from acestep.memory.manager import MemoryManager
from acestep.memory.mixed import upstream_rotary_freqs, use_rope_mode
from acestep.memory.precision import FLOAT32_PARTS, plan_named, planned_dtype, rope_mode, validate_settings

GIB = 2**30
LONG_LYRICS = "[verse]\n" + "\n".join(["we ride the night until the morning light"] * 40)  # ~1,700 tokens


@pytest.mark.parametrize(
    ("gpu", "policy", "dtype", "float32_parts"),
    [
        ("t4", "fp16-mixed", "float16", FLOAT32_PARTS),
        ("4090", "bfloat16", "bfloat16", ()),
        ("h100", "bfloat16", "bfloat16", ()),
        ("gb10", "bfloat16", "bfloat16", ()),
    ],
)
def test_each_simulated_gpu_gets_its_policy(gpu, policy, dtype, float32_parts):
    name, gib, capability = TARGET_GPUS[gpu]
    manager = MemoryManager(StaticSource([GpuInfo(0, name, gib * GIB, 0, capability)]), env={})
    assert manager.get_status()["precision"]["dtype"] == policy
    plan = plan_named(planned_dtype("cuda", capability[0], None))
    assert (plan.name, plan.dtype, plan.float32_parts, plan.rope) == (policy, dtype, float32_parts, "fp32")
    assert FLOAT32_PARTS == ("condition_encoder.lyric_encoder",)


def test_policy_names_and_settings():
    assert planned_dtype("cuda", 7, "mixed") == "fp16-mixed"
    assert planned_dtype("cuda", 9, "float16-mixed") == "fp16-mixed"
    assert planned_dtype("cuda", 7, "float32") == "float32"  # the setting wins over the policy
    assert planned_dtype("cpu") == "float32"
    assert rope_mode({}) == "fp32"
    assert rope_mode({"ACESTEP_ROPE": " Upstream "}) == "upstream"
    with pytest.raises(ValueError, match=r"ACESTEP_ROPE must be one of fp32, upstream, got 'bf16'"):
        validate_settings({"ACESTEP_ROPE": "bf16"})


def test_fp16_mixed_stores_the_lyric_encoder_in_float32(upstream_turbo):
    engine = AceStep.from_pretrained(upstream_turbo, device="cpu", dtype="fp16-mixed")
    encoder = engine.components.condition_encoder
    lyric = {id(p) for p in encoder.lyric_encoder.parameters()}
    assert lyric and all(p.dtype == torch.float32 for p in encoder.lyric_encoder.parameters())
    assert {p.dtype for p in encoder.parameters() if id(p) not in lyric} == {torch.float16}
    assert {p.dtype for p in engine.components.transformer.parameters()} == {torch.float16}
    assert engine.components.vae.dtype == torch.float16
    assert engine.dtype == torch.float16 and engine.precision.name == "fp16-mixed"
    # Cast once from the file's dtype: the float32 copy holds exactly the stored values.
    stored = load_file(str(next((upstream_turbo / "acestep-v15-turbo").glob("*.safetensors"))))
    weight = stored["encoder.lyric_encoder.layers.0.mlp.down_proj.weight"]
    assert torch.equal(encoder.lyric_encoder.layers[0].mlp.down_proj.weight, weight.float())


def _hot_checkpoint(source: Path, target: Path, factor: float) -> Path:
    """A copy whose lyric encoder makes activations beyond fp16's range (max 65,504), as trained
    weights do on real lyrics (upstream #1243); the encoder's final RMSNorm bounds its output."""
    shutil.copytree(source, target)
    weights = next((target / "acestep-v15-turbo").glob("*.safetensors"))
    state = load_file(str(weights))
    key = "encoder.lyric_encoder.layers.0.mlp.down_proj.weight"
    state[key] = state[key] * factor
    save_file(state, str(weights), metadata={"format": "pt"})
    return target


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _float32_and_mixed(root: Path, out: Path) -> tuple[np.ndarray, np.ndarray]:
    request = {"caption": "pop", "lyrics": LONG_LYRICS, "audio_duration": 8.0, "seed": 3, "batch_size": 1}
    _, reference = generate(
        AceStep.from_pretrained(root, device="cpu", dtype="float32"), out / "f32", **request
    )
    _, mixed = generate(
        AceStep.from_pretrained(root, device="cpu", dtype="fp16-mixed"), out / "mixed", **request
    )
    assert np.isfinite(mixed).all()
    return reference, mixed


def test_long_lyrics_in_fp16_mixed_match_float32(upstream_turbo, tmp_path):
    reference, mixed = _float32_and_mixed(upstream_turbo, tmp_path)
    # fp16 rounding through 8 random-weight steps and an fp16 VAE: measured 0.11 here.
    assert _relative(mixed, reference) < 0.25


def test_fp16_overflow_in_the_lyric_encoder_is_contained_by_fp16_mixed(upstream_turbo, tmp_path):
    hot = _hot_checkpoint(upstream_turbo, tmp_path / "hot", 60000.0)
    plain = AceStep.from_pretrained(hot, device="cpu", dtype="float16")
    request = {"caption": "pop", "lyrics": LONG_LYRICS, "audio_duration": 8.0, "seed": 3, "batch_size": 1}
    with pytest.raises(
        GenerationError, match="NaN or infinite latents in plain float16; ACESTEP_DTYPE=fp16-mixed"
    ):
        generate(plain, tmp_path / "plain", **request)
    reference, mixed = _float32_and_mixed(hot, tmp_path)
    assert _relative(mixed, reference) < 0.25


def test_upstream_rope_rounds_the_frequencies_only_below_float32():
    use_rope_mode("fp32")
    from diffusers.models.transformers import ace_step_transformer as dt

    cos32, sin32 = dt._ace_step_rotary_freqs(3000, 128, 1_000_000, torch.device("cpu"), torch.float32)
    cos_up, sin_up = upstream_rotary_freqs(3000, 128, 1_000_000, torch.device("cpu"), torch.float32)
    torch.testing.assert_close(cos_up, cos32, rtol=0, atol=1e-6)
    torch.testing.assert_close(sin_up, sin32, rtol=0, atol=1e-6)
    cos_bf, _ = upstream_rotary_freqs(3000, 128, 1_000_000, torch.device("cpu"), torch.bfloat16)
    cos_ref, _ = dt._ace_step_rotary_freqs(3000, 128, 1_000_000, torch.device("cpu"), torch.bfloat16)
    drift = (cos_bf.float() - cos_ref.float()).abs().amax(dim=-1)
    # Rounded frequencies drift linearly with position: small early, large by ~60 s of tokens.
    assert drift[:50].max() < 0.1 < drift[1500:].max()


def test_rope_mode_reaches_the_dit(upstream_turbo, tmp_path, monkeypatch):
    request = {"caption": "x", "audio_duration": 4.0, "seed": 5, "batch_size": 1}
    try:
        monkeypatch.setenv("ACESTEP_ROPE", "upstream")
        upstream = AceStep.from_pretrained(upstream_turbo, device="cpu", dtype="bfloat16")
        _, a = generate(upstream, tmp_path / "a", **request)
        monkeypatch.setenv("ACESTEP_ROPE", "fp32")
        default = AceStep.from_pretrained(upstream_turbo, device="cpu", dtype="bfloat16")
        _, b = generate(default, tmp_path / "b", **request)
        assert default.precision.rope == "fp32" and upstream.precision.rope == "upstream"
        assert not np.array_equal(a, b)
    finally:
        use_rope_mode("fp32")
