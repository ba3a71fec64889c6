"""Precision and attention policy: ACESTEP_DTYPE, ACESTEP_ATTENTION and the per-GPU default."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _util import TARGET_GPUS, generate

from acestep import AceStep
from acestep.memory.gpus import GpuInfo, StaticSource
from acestep.memory.manager import MemoryManager
from acestep.memory.precision import (
    ATTENTION_BACKENDS,
    attention_backend,
    default_dtype,
    planned_dtype,
    validate_settings,
)
from acestep.serving.config import ServerConfig

GIB = 2**30
GPUS = TARGET_GPUS


def manager_for(gpu: str, **env) -> MemoryManager:
    name, gib, capability = GPUS[gpu]
    return MemoryManager(StaticSource([GpuInfo(0, name, gib * GIB, 0, capability)]), env=env)


@pytest.mark.parametrize(
    ("gpu", "expected"),
    [("t4", "fp16-mixed"), ("4090", "bfloat16"), ("h100", "bfloat16"), ("gb10", "bfloat16")],
)
def test_each_gpu_gets_its_dtype(gpu, expected):
    status = manager_for(gpu).get_status()
    assert status["precision"] == {"dtype": expected, "attention": "sdpa", "rope": "fp32", "fast_dit": "off"}


def test_cpu_and_mps_defaults():
    assert planned_dtype("cpu") == "float32"
    assert planned_dtype("mps") == "float16"
    assert MemoryManager(StaticSource([]), env={}).get_status()["precision"]["dtype"] == "float32"


def test_the_setting_overrides_the_policy():
    assert manager_for("t4", ACESTEP_DTYPE="bf16").dtype == "bfloat16"
    assert manager_for("4090", ACESTEP_DTYPE="float32").dtype == "float32"
    assert manager_for("4090", ACESTEP_DTYPE="auto").dtype == "bfloat16"
    assert default_dtype(torch.device("cpu"), "fp16") == torch.float16
    assert default_dtype(torch.device("cpu"), torch.bfloat16) == torch.bfloat16


def test_default_dtype_reads_the_environment(monkeypatch):
    monkeypatch.setenv("ACESTEP_DTYPE", "bfloat16")
    assert default_dtype(torch.device("cpu")) == torch.bfloat16
    monkeypatch.setenv("ACESTEP_DTYPE", "auto")
    assert default_dtype(torch.device("cpu")) == torch.float32


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ACESTEP_DTYPE": "half"}, r"ACESTEP_DTYPE.*got 'half'"),
        ({"ACESTEP_ATTENTION": "flash_hub"}, r"ACESTEP_ATTENTION must be one of .*got 'flash_hub'"),
    ],
)
def test_bad_settings_stop_the_start(env, message):
    with pytest.raises(ValueError, match=message):
        validate_settings(env)
    with pytest.raises(ValueError, match=message):
        ServerConfig.from_env(env)
    with pytest.raises(ValueError, match=message):
        manager_for("4090", **env)


def test_attention_names():
    assert attention_backend({}) == "sdpa"
    assert attention_backend({"ACESTEP_ATTENTION": "auto"}) == "sdpa"
    assert attention_backend({"ACESTEP_ATTENTION": " SDPA-Math "}) == "sdpa-math"
    # Nothing that downloads kernels from a hub at run time.
    assert not any(value.endswith("_hub") for value in ATTENTION_BACKENDS.values())


def _backends(engine: AceStep) -> set:
    transformer = engine.components.transformer
    return {
        getattr(module.processor, "_attention_backend", None)
        for module in transformer.modules()
        if hasattr(module, "processor")
    }


def test_the_attention_setting_reaches_the_models(upstream_turbo, tmp_path, monkeypatch):
    monkeypatch.setenv("ACESTEP_ATTENTION", "sdpa")
    default = AceStep.from_pretrained(upstream_turbo, device="cpu")
    assert _backends(default) == {None}  # diffusers' own default (SDPA)
    monkeypatch.setenv("ACESTEP_ATTENTION", "sdpa-math")
    math = AceStep.from_pretrained(upstream_turbo, device="cpu")
    assert {str(getattr(b, "value", b)) for b in _backends(math)} == {"_native_math"}
    _, a = generate(default, tmp_path / "a", caption="x", audio_duration=4.0, seed=5, batch_size=1)
    _, b = generate(math, tmp_path / "b", caption="x", audio_duration=4.0, seed=5, batch_size=1)
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_a_kernel_that_is_not_installed_is_refused(upstream_turbo, monkeypatch):
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("flash-attn is installed here")
    monkeypatch.setenv("ACESTEP_ATTENTION", "flash")
    with pytest.raises((ImportError, RuntimeError), match="flash"):
        AceStep.from_pretrained(upstream_turbo, device="cpu")
