"""Weight quantization: the policy per card (torch-free), and int8 through torchao on the tiny model.

The int8 engine quantizes the DiT's and the text encoder's linear layers; every task runs end to
end, twice gives the same bytes, and its final latents stay within ``LATENT_BOUND`` (relative L2)
of the float32 engine's (measured: docs/memory.md, "Quantization").
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from _util import generate

from acestep import AceStep
from acestep.engine.quantize import (
    LM_KEPT,
    inner_tensors,
    int8_layout,
    is_quantized,
    quantize_module,
    torchao_config,
    weight_bytes,
)
from acestep.memory.gpus import GIB, GpuInfo, StaticSource
from acestep.memory.manager import MemoryManager
from acestep.memory.quantization import (
    INSTALL_HINT,
    QuantizationError,
    QuantizationPlan,
    parse_setting,
    plan_quantization,
)
from acestep.request import GenerationRequest
from acestep.result import GenerationResult

TASKS = ("text2music", "cover", "repaint", "extract", "lego", "complete")
# Relative L2 of the int8 engine's final latents against float32's on the tiny model, 2 steps.
# Measured 0.005 (lego) to 0.026 (cover), the same to 0.001 under ATEN_CPU_CAPABILITY=default;
# the bound leaves about twice that. Unquantized weights give 0, wrong scales give about 1.
LATENT_BOUND = 0.06
INT8_EVERYWHERE = QuantizationPlan(dit="int8", text_encoder="int8")


@pytest.fixture(scope="module")
def engine_int8(diffusers_base):
    return AceStep.from_pretrained(diffusers_base, device="cpu", quantization=INT8_EVERYWHERE)


def _fields(task: str, source_wav) -> dict:
    fields = dict(
        task_type=task,
        caption="warm piano",
        lyrics="[verse]\nla la",
        seed=3,
        batch_size=1,
        inference_steps=2,
        track_name="drums" if task in ("lego", "extract") else None,
    )
    if task == "text2music":
        fields["audio_duration"] = 3.0
    else:
        fields["src_audio"] = source_wav
    return fields


def relative_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_the_int8_engine_holds_int8_linears(engine_int8, engine_diffusers_base):
    dit = engine_int8.components.transformer
    linears = [m for m in dit.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(is_quantized(m.weight) for m in linears)
    assert all(inner_tensors(m.weight)[0].dtype == torch.int8 for m in linears)
    encoder = engine_int8.components.text_encoder
    assert any(is_quantized(m.weight) for m in encoder.modules() if isinstance(m, torch.nn.Linear))
    plain = engine_diffusers_base.components.transformer
    assert weight_bytes(dit) < weight_bytes(plain)  # int8 plus scales is smaller than float32
    assert engine_int8.quantization.as_dict()["dit"] == "int8"


def final_latents(engine: AceStep, out, **fields) -> tuple[GenerationResult, np.ndarray, np.ndarray]:
    """Run one request; the result, its audio and the latents the VAE decoded (a hook on the real
    decoder records its input)."""
    seen: list[torch.Tensor] = []
    hook = engine.components.vae.decoder.register_forward_pre_hook(lambda _m, a: seen.append(a[0].clone()))
    try:
        result, audio = generate(engine, out, **fields)
    finally:
        hook.remove()
    return result, audio, torch.cat(seen).float().numpy()


@pytest.mark.parametrize("task", TASKS)
def test_int8_runs_every_task_close_to_float32(
    engine_int8, engine_diffusers_base, source_wav, tmp_path, task
):
    fields = _fields(task, source_wav)
    result, audio, latents = final_latents(engine_int8, tmp_path / "int8", **fields)
    _, _, reference = final_latents(engine_diffusers_base, tmp_path / "f32", **fields)
    assert result.task_type == task and np.isfinite(audio).all() and np.abs(audio).max() > 0
    difference = relative_l2(latents, reference)
    print(f"{task}: relative L2 of the final latents, int8 vs float32 = {difference:.4f}")
    assert difference < LATENT_BOUND
    assert difference > 0  # the weights really changed: quantized output is not float32's
    if task == "text2music":  # deterministic: the same request again gives the same bytes
        again, _ = generate(engine_int8, tmp_path / "again", **fields)
        assert open(again.audio_paths[0], "rb").read() == open(result.audio_paths[0], "rb").read()


def test_the_lyric_path_stays_finite_under_fp16_mixed_plus_int8(diffusers_base, tmp_path):
    engine = AceStep.from_pretrained(
        diffusers_base, device="cpu", dtype="fp16-mixed", quantization=INT8_EVERYWHERE
    )
    first = next(m for m in engine.components.transformer.modules() if isinstance(m, torch.nn.Linear))
    assert is_quantized(first.weight) and first.weight.dtype == torch.float16
    fields = dict(caption="x", lyrics="[verse]\nla la la", seed=1, audio_duration=2.0, inference_steps=2)
    result, audio = generate(engine, tmp_path, **fields)  # check_latents refuses NaN latents
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0


def test_an_int8_lm_thinks_end_to_end_and_reloads_from_the_cache(
    lm_checkpoint, lm_limits, tmp_path, monkeypatch
):
    monkeypatch.setenv("ACESTEP_QUANTIZE_CACHE", str(tmp_path / "cache"))
    request = GenerationRequest(
        caption="tiny test song", lyrics="[verse]\nla la", thinking=True, use_cot_caption=False,
        audio_duration=2.0, inference_steps=2, guidance_scale=1.0, seed=11, audio_format="wav",
    )  # fmt: skip
    plans = []
    for run in ("fresh", "cached"):
        engine = AceStep.from_pretrained(
            lm_checkpoint, device="cpu", limits=lm_limits, quantization=QuantizationPlan(lm="int8")
        )
        result = engine.generate(request, tmp_path / run, lm_only=True)  # the LM's stage alone
        model = engine.lm.model.model
        linears = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
        assert linears and all(is_quantized(m.weight) for m in linears)
        assert result.metas["lm_metas"] and not result.items  # the int8 LM planned the song
        plans.append(result.metas["lm_metas"])
        if run == "fresh" and int8_layout() == "Int8Tensor":  # written; the second load reads it
            assert [p.name for p in (tmp_path / "cache").glob("*.lm.*.safetensors")], "no LM entry written"
    assert plans[0] == plans[1]


def test_the_lm_keeps_its_tied_head_and_quantizes_the_rest():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    before = model(ids).logits
    count = quantize_module(model, "int8", LM_KEPT)
    assert count == 7  # q, k, v, o, gate, up, down; not lm_head
    assert type(model.lm_head.weight) is torch.nn.Parameter
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    after = model(ids).logits
    assert torch.isfinite(after).all() and relative_l2(after.detach().numpy(), before.detach().numpy()) < 0.2


def test_without_torchao_a_quantized_mode_names_the_extra(monkeypatch):
    for name in [n for n in sys.modules if n == "torchao" or n.startswith("torchao.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torchao", None)  # what an uninstalled package imports as
    with pytest.raises(QuantizationError, match=r'pip install "acestep\[quant\]"'):
        torchao_config("int8")
    assert 'pip install "acestep[quant]"' == INSTALL_HINT


# -- the policy, per simulated card ------------------------------------------------------------

CARDS = {  # name: (device, GiB, compute capability)
    "T4 16 GB": ("cuda", 15.6, (7, 5)),
    "8 GB": ("cuda", 8, (8, 6)),
    "6 GB": ("cuda", 6, (8, 6)),
    "4 GB": ("cuda", 4, (7, 5)),
    "4090 24 GB": ("cuda", 23.6, (8, 9)),
    "GB10 unified": ("cuda", 119.7, (12, 1)),
    "H100 80 GB": ("cuda", 79.2, (9, 0)),
    "CPU": ("cpu", None, None),
}
# Upstream's defaults: int8 for the DiT below 20 GB; the text encoder and LM only when asked.
EXPECTED_DIT = {
    "T4 16 GB": "int8",
    "8 GB": "int8",
    "6 GB": "int8",
    "4 GB": "int8",
    "4090 24 GB": "none",
    "GB10 unified": "none",
    "H100 80 GB": "none",
    "CPU": "none",
}


@pytest.mark.parametrize("card", CARDS)
def test_the_default_per_card_is_upstreams(card):
    device, gib, capability = CARDS[card]
    plan = plan_quantization(device, gib, capability, env={})
    assert (plan.dit, plan.text_encoder, plan.lm) == (EXPECTED_DIT[card], "none", "none")
    assert plan.as_dict()["origin"]["dit"].startswith("auto")


@pytest.mark.parametrize("card", CARDS)
@pytest.mark.parametrize("mode", ["fp8", "w8a8"])
def test_float8_modes_need_compute_capability_8_9(card, mode):
    device, gib, capability = CARDS[card]
    env = {"ACESTEP_QUANTIZE": f"dit={mode}"}
    if device == "cuda" and capability >= (8, 9):
        assert plan_quantization(device, gib, capability, env).dit == mode
    else:
        with pytest.raises(QuantizationError, match=rf"dit={mode} refused: .*8\.9"):
            plan_quantization(device, gib, capability, env)


def test_int8_is_allowed_on_every_card():
    for device, gib, capability in CARDS.values():
        plan = plan_quantization(device, gib, capability, {"ACESTEP_QUANTIZE": "int8"})
        assert (plan.dit, plan.text_encoder, plan.lm) == ("int8",) * 3
        assert plan.as_dict()["origin"]["lm"] == "ACESTEP_QUANTIZE"


def test_the_setting_per_component_and_upstreams_names():
    assert parse_setting("dit=int8,text_encoder=none,lm=int8") == {
        "dit": "int8",
        "text_encoder": "none",
        "lm": "int8",
    }
    assert parse_setting("lm=int8_weight_only") == {"dit": "auto", "text_encoder": "auto", "lm": "int8"}
    assert parse_setting("fp8_weight_only")["dit"] == "fp8"
    assert parse_setting("W8A8_DYNAMIC")["text_encoder"] == "w8a8"
    assert parse_setting("")["dit"] == "auto"
    # upstream's setting name is read when ours is unset; ours wins when both are set
    assert plan_quantization("cpu", None, None, {"ACESTEP_QUANTIZATION": "int8_weight_only"}).dit == "int8"
    both = {"ACESTEP_QUANTIZATION": "int8", "ACESTEP_QUANTIZE": "none"}
    assert plan_quantization("cpu", None, None, both).dit == "none"
    # the T4's default turned off by hand
    assert plan_quantization("cuda", 15.6, (7, 5), {"ACESTEP_QUANTIZE": "dit=none"}).dit == "none"


@pytest.mark.parametrize("bad", ["int4", "dit", "vae=int8", "dit=", "dit=int9"])
def test_a_bad_setting_is_refused_with_the_choices(bad):
    with pytest.raises(QuantizationError, match="ACESTEP_QUANTIZE"):
        plan_quantization("cpu", None, None, {"ACESTEP_QUANTIZE": bad})


def test_mps_refuses_every_quantized_mode():
    with pytest.raises(QuantizationError, match="MPS"):
        plan_quantization("mps", None, None, {"ACESTEP_QUANTIZE": "int8"})
    assert not plan_quantization("mps", None, None, {}).active


def _card(gib: float, capability: tuple[int, int]) -> StaticSource:
    return StaticSource([GpuInfo(0, f"Fake {gib} GiB", int(gib * GIB), 0, capability)])


def test_the_memory_status_shows_the_modes_and_a_bad_card_stops_the_start():
    t4 = MemoryManager(source=_card(15.6, (7, 5)), env={})
    shown = t4.status().as_dict()["quantization"]
    assert {k: shown[k] for k in ("dit", "text_encoder", "lm")} == {
        "dit": "int8",
        "text_encoder": "none",
        "lm": "none",
    }
    from types import SimpleNamespace

    from acestep.ui.actions import memory_text
    from acestep.ui.i18n import strings

    shown_in_ui = memory_text(SimpleNamespace(manager=t4), strings("en"))  # the UI's Memory tab
    assert "**quantization:** dit int8, text_encoder none, lm none" in shown_in_ui
    asked = MemoryManager(source=_card(80, (9, 0)), env={"ACESTEP_QUANTIZE": "dit=fp8,lm=int8"})
    assert asked.get_status()["quantization"]["dit"] == "fp8"
    assert asked.get_status()["quantization"]["origin"]["lm"] == "ACESTEP_QUANTIZE"
    with pytest.raises(QuantizationError, match="fp8 refused.*7.5"):
        MemoryManager(source=_card(15.6, (7, 5)), env={"ACESTEP_QUANTIZE": "fp8"})
    # MAX_CUDA_VRAM simulates a smaller card: its tier's default follows
    capped = MemoryManager(source=_card(80, (9, 0)), env={"MAX_CUDA_VRAM": "8"})
    assert capped.get_status()["quantization"]["dit"] == "int8"


def test_upstreams_quantization_flag_sets_the_setting():
    import argparse

    from acestep.cli.memory_flags import _memory_env, _memory_flags

    parser = argparse.ArgumentParser()
    _memory_flags(parser)
    env = _memory_env(parser.parse_args(["--quantization", "int8_weight_only"]))
    assert env["ACESTEP_QUANTIZE"] == "int8_weight_only"
    assert plan_quantization("cpu", None, None, env).dit == "int8"
    assert _memory_env(parser.parse_args(["--quantize", "none"]))["ACESTEP_QUANTIZE"] == "none"


def test_parking_keeps_quantized_weights_quantized():
    from acestep.memory.transfer import HostCopies

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Linear(32, 8))
    quantize_module(module, "int8")
    x = torch.randn(2, 32)
    before = module(x)
    copies = HostCopies(pin=False)
    copies.to_host("dit", module)  # a park: into host buffers (plain ones for plain tensors)
    copies.to_device(module, torch.device("cpu"))
    assert all(is_quantized(m.weight) for m in module)
    assert torch.equal(module(x), before)


# -- through a real server: the setting reaches the worker, the status shows it --------------------


def test_a_server_quantizes_its_worker_and_shows_the_modes(upstream_base, tmp_path):
    from _server import Server

    server = Server(upstream_base, tmp_path, ACESTEP_QUANTIZE="dit=int8,text_encoder=int8")
    try:
        audio, _ = server.generate(
            {"prompt": "x", "lyrics": "[verse]\nla", "audio_duration": 2, "inference_steps": 2}
        )
        assert np.isfinite(audio).all()
        memory = server.get("/v1/memory").json()["data"]
        assert {k: memory["quantization"][k] for k in ("dit", "text_encoder", "lm")} == {
            "dit": "int8",
            "text_encoder": "int8",
            "lm": "none",
        }
    finally:
        server.stop()
    log = server.log.read_text()
    assert (
        "linear layers of the dit to int8" in log and "of the text_encoder to int8" in log
    )  # the worker did


def test_a_mode_the_machine_cannot_run_stops_the_start(upstream_base, tmp_path):
    from _server import Server

    with pytest.raises(RuntimeError, match=r"dit=fp8 refused: fp8 needs a CUDA card"):
        Server(upstream_base, tmp_path, ACESTEP_QUANTIZE="dit=fp8")


def test_a_quantized_dit_runs_lora_unfused_even_when_fusing_is_asked(diffusers_base, tmp_path, monkeypatch):
    from acestep.testing_lora import make_tiny_lora

    make_tiny_lora(tmp_path / "loras" / "drums", layout="diffusers", variant="base", rank=4, alpha=8, seed=1)
    monkeypatch.setenv("ACESTEP_LORA_FUSE", "1")
    engine = AceStep.from_pretrained(diffusers_base, device="cpu", quantization=QuantizationPlan(dit="int8"))
    engine.adapters.directory = tmp_path / "loras"
    assert engine.adapters.fuse is False
    fields = dict(caption="x", audio_duration=2.0, seed=1, inference_steps=2)
    result, audio = generate(engine, tmp_path / "out", lora="drums", **fields)
    assert result.metas["lora"] == [{"name": "drums", "scale": 1.0}] and np.isfinite(audio).all()


def test_a_torchao_that_does_not_import_turns_a_default_off_and_refuses_an_asked_mode(tmp_path):
    """A torchao built for another torch fails at import (0.18 on torch 2.9): shadowed here by a
    package that raises as it does. The default int8 of an 8 GiB card falls back to none with the
    reason; an asked mode is refused with it."""
    broken = tmp_path / "torchao"
    broken.mkdir()
    (broken / "__init__.py").write_text('raise ImportError("cannot import name ScalingType")\n')
    script = (
        "from acestep.engine.quantize import usable_plan\n"
        "from acestep.memory.quantization import QuantizationError, plan_quantization\n"
        "auto = usable_plan(plan_quantization('cuda', 8.0, (8, 6), env={}))\n"
        "print(auto.dit, dict(auto.origin)['dit'])\n"
        "try:\n"
        "    usable_plan(plan_quantization('cuda', 8.0, (8, 6), env={'ACESTEP_QUANTIZE': 'int8'}))\n"
        "except QuantizationError as exc:\n"
        "    print('refused:', exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    command = [sys.executable, "-c", script]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    auto, refused = done.stdout.strip().splitlines()[-2:]
    assert auto.startswith("none auto (cuda, 8 GiB); skipped: torchao") and "ScalingType" in auto
    assert refused.startswith("refused: dit=int8") and "does not import with torch" in refused
