"""The on-disk cache of quantized weights (acestep/engine/quant_cache.py) on the tiny model, CPU.

A reload reads the entries instead of quantizing (no "quantized ..." log line) and gives the same
tensors, bit for bit, and the same audio bytes; a changed mode or checkpoint misses and replaces
the entry; a corrupt entry is rewritten; a cache that cannot be written never stops a load.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from _util import generate
from loguru import logger
from safetensors import safe_open

from acestep import AceStep
from acestep.engine.quant_cache import META_KEY, cache_folder
from acestep.engine.quantize import int8_layout, quantize_module
from acestep.memory.quantization import QuantizationPlan

INT8 = QuantizationPlan(dit="int8", text_encoder="int8")
# torchao 0.15 (the images' torch 2.9) stores int8 in a layout its safetensors support cannot save.
pytestmark = pytest.mark.skipif(int8_layout() != "Int8Tensor", reason="the cache needs torchao 0.16+")
QUANTIZED_LINE = "linear layers of the"  # quantize_module's line when it quantizes (a miss)
HIT_LINE = "from the quantized cache"


@pytest.fixture
def checkpoint(diffusers_base: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny checkpoint: tests touch its files."""
    return Path(shutil.copytree(diffusers_base, tmp_path / "model"))


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("ACESTEP_QUANTIZE_CACHE", str(folder))
    return folder


@pytest.fixture
def logs():
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="INFO")
    yield lines
    logger.remove(sink)


def load(path: Path, logs: list[str], plan: QuantizationPlan = INT8) -> tuple[AceStep, list[str]]:
    """An engine and the log lines its load wrote."""
    start = len(logs)
    engine = AceStep.from_pretrained(path, device="cpu", quantization=plan)
    return engine, logs[start:]


def misses(lines: list[str]) -> int:
    return sum(QUANTIZED_LINE in line and "quantized " in line for line in lines)


def hits(lines: list[str]) -> int:
    return sum(HIT_LINE in line for line in lines)


def entries(folder: Path) -> dict[str, str]:
    """component -> entry file name."""
    return {p.name.split(".")[-4]: p.name for p in folder.glob("*.safetensors")}


def quantized_state(engine: AceStep) -> dict[str, torch.Tensor]:
    """Every inner tensor of every quantized weight (as raw bytes), by name."""
    state = {}
    for part in ("transformer", "text_encoder"):
        for name, tensor in getattr(engine.components, part).state_dict().items():
            if type(tensor) is torch.Tensor:
                continue
            names, attributes = tensor.__tensor_flatten__()
            state[f"{part}.{name}:attrs"] = repr(attributes)
            for inner in names:
                value = getattr(tensor, inner)
                state[f"{part}.{name}.{inner}"] = value.contiguous().view(torch.uint8)
    return state


def assert_same_weights(a: AceStep, b: AceStep) -> None:
    first, second = quantized_state(a), quantized_state(b)
    assert first.keys() == second.keys() and len(first) > 100
    for key, value in first.items():
        assert value == second[key] if isinstance(value, str) else torch.equal(value, second[key]), key


def test_a_reload_reads_the_cache_and_gives_the_same_weights_and_audio(checkpoint, cache, logs, tmp_path):
    fresh, lines = load(checkpoint, logs)
    assert misses(lines) == 2 and hits(lines) == 0
    written = entries(cache)
    assert set(written) == {"dit", "text_encoder"}
    for name in written.values():
        with safe_open(str(cache / name), framework="pt") as handle:
            key = json.loads(handle.metadata()[META_KEY])
            assert key["mode"] == "int8" and key["dtype"] == "float32" and handle.keys()

    cached, lines = load(checkpoint, logs)
    assert misses(lines) == 0 and hits(lines) == 2  # quantize_ was not run
    assert entries(cache) == written
    assert_same_weights(fresh, cached)

    request = dict(caption="warm piano", lyrics="[verse]\nla", seed=3, inference_steps=2, audio_duration=3.0)
    first, audio_a = generate(fresh, tmp_path / "a", **request)
    second, audio_b = generate(cached, tmp_path / "b", **request)
    assert audio_a.tobytes() == audio_b.tobytes()
    assert Path(first.audio_paths[0]).read_bytes() == Path(second.audio_paths[0]).read_bytes()


def test_a_changed_mode_or_checkpoint_misses_and_replaces_the_entry(checkpoint, cache, logs):
    load(checkpoint, logs)
    before = entries(cache)

    _, lines = load(checkpoint, logs, QuantizationPlan(dit="w8a8", text_encoder="int8"))
    assert misses(lines) == 1 and hits(lines) == 1
    after_mode = entries(cache)
    assert after_mode["dit"] != before["dit"] and after_mode["text_encoder"] == before["text_encoder"]
    assert len(list(cache.glob("*.safetensors"))) == 2  # the int8 DiT entry was removed

    weights = checkpoint / "transformer" / "diffusion_pytorch_model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touched
    with (checkpoint / "text_encoder" / "config.json").open("a") as config:
        config.write("\n")  # a new size, the same configuration
    _, lines = load(checkpoint, logs, QuantizationPlan(dit="w8a8", text_encoder="int8"))
    assert misses(lines) == 2 and hits(lines) == 0
    after_touch = entries(cache)
    assert set(after_touch.values()).isdisjoint(after_mode.values())
    assert len(list(cache.glob("*.safetensors"))) == 2


def test_a_corrupt_entry_is_ignored_and_rewritten(checkpoint, cache, logs):
    fresh, _ = load(checkpoint, logs)
    dit_entry = cache / entries(cache)["dit"]
    dit_entry.write_bytes(b"not a safetensors file")

    reloaded, lines = load(checkpoint, logs)
    assert any("ignored" in line and str(dit_entry) in line for line in lines)
    assert misses(lines) == 1 and hits(lines) == 1
    assert_same_weights(fresh, reloaded)
    with safe_open(str(dit_entry), framework="pt") as handle:  # rewritten, whole
        assert META_KEY in handle.metadata()

    _, lines = load(checkpoint, logs)
    assert misses(lines) == 0 and hits(lines) == 2


def test_a_cache_that_cannot_be_written_never_stops_a_load(checkpoint, tmp_path, monkeypatch, logs):
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a folder under a regular file cannot be made, even by root
    monkeypatch.setenv("ACESTEP_QUANTIZE_CACHE", str(blocker / "cache"))
    engine, lines = load(checkpoint, logs)
    assert misses(lines) == 2
    assert sum("not cached" in line for line in lines) == 2
    monkeypatch.setenv("ACESTEP_QUANTIZE_CACHE", "off")
    plain, lines = load(checkpoint, logs)
    assert misses(lines) == 2 and hits(lines) == 0
    assert_same_weights(engine, plain)


def test_a_read_only_cache_folder_is_still_read(checkpoint, cache, logs):
    """A hit writes nothing (so a read-only mount serves it); the mode bits bind all but root."""
    load(checkpoint, logs)
    snapshot = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    cache.chmod(0o555)
    try:
        _, lines = load(checkpoint, logs)
        assert hits(lines) == 2 and misses(lines) == 0
        assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == snapshot
    finally:
        cache.chmod(0o755)


@pytest.mark.parametrize("mode", ["int8", "w8a8", "fp8"])
def test_torchao_flattening_round_trips_each_mode_exactly(mode, tmp_path, logs):
    """torchao's safetensors flattening keeps every inner tensor and attribute (float8 on the CPU too)."""
    source = tmp_path / "source"
    source.mkdir()
    (source / "model.safetensors").write_bytes(b"stands for the weights")

    def network() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.GELU(), torch.nn.Linear(16, 8)).to(
            torch.bfloat16
        )

    made, read = network(), network()
    assert quantize_module(made, mode, (), tmp_path / "cache", source, "dit") == 2
    assert quantize_module(read, mode, (), tmp_path / "cache", source, "dit") == 2
    assert hits(logs) == 1
    for a, b in zip(made.state_dict().values(), read.state_dict().values(), strict=True):
        assert type(a) is type(b) and a.dtype == b.dtype
        if type(a) is torch.Tensor:
            continue
        assert repr(a.__tensor_flatten__()) == repr(b.__tensor_flatten__())  # names and attributes
        for inner in a.__tensor_flatten__()[0]:
            x, y = getattr(a, inner), getattr(b, inner)
            assert x.dtype == y.dtype and torch.equal(x.view(torch.uint8), y.view(torch.uint8))
    probe = torch.randn(2, 32, dtype=torch.bfloat16)
    if mode == "int8":  # the CPU runs int8 weight-only; the others' kernels need a CUDA card
        with torch.inference_mode():
            assert torch.equal(made(probe), read(probe))


def test_the_setting_names_a_folder_or_turns_the_cache_off(tmp_path):
    assert cache_folder({"ACESTEP_CACHE_DIR": str(tmp_path)}) == tmp_path / "acestep" / "quantized"
    assert cache_folder({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "acestep" / "quantized"
    blank = {"ACESTEP_QUANTIZE_CACHE": " ", "XDG_CACHE_HOME": "/x"}
    assert cache_folder(blank) == Path("/x/acestep/quantized")
    for word in ("off", "none", "NO", "false", "0"):
        assert cache_folder({"ACESTEP_QUANTIZE_CACHE": word}) is None
    assert cache_folder({"ACESTEP_QUANTIZE_CACHE": str(tmp_path / "q")}) == tmp_path / "q"
