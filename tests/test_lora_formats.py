"""The adapter writers: a LoRA trained through PEFT on the real tiny DiT, written in diffusers' and
upstream's formats, is listed by the catalog in both and reproduces its training-time output when
loaded; a LoKr trained through LyCORIS likewise, in upstream's LoKr format; writes are atomic and
never replace a folder holding other files; bad input is refused with the reason."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from acestep import AceStep
from acestep.lora.catalog import LOKR_WEIGHTS, scan
from acestep.lora.formats import write_lokr, write_lora
from acestep.testing_lora import dit_probe

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


@pytest.fixture(scope="module")
def engine(upstream_base):
    return AceStep.from_pretrained(upstream_base, device="cpu")


@pytest.fixture
def dit(engine, tmp_path):
    """The engine's DiT with no adapter, reading adapters from this test's own folder."""
    engine.adapters.unload()
    engine.adapters.directory, engine.adapters.fuse = tmp_path / "loras", False
    return engine.components.transformer


def randomize(params, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in params:
            param.copy_(0.3 * torch.randn(param.shape, generator=generator) / param.shape[-1] ** 0.5)


def trained_lora(dit: torch.nn.Module) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A LoRA as the trainer has it: PEFT's state dict on diffusers' DiT, and its output."""
    from peft import LoraConfig, get_peft_model_state_dict

    dit.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS), adapter_name="trained")
    try:
        randomize([p for n, p in sorted(dit.named_parameters()) if ".trained." in n], seed=1)
        state = get_peft_model_state_dict(dit, adapter_name="trained")
        return {k: v.clone() for k, v in state.items()}, dit_probe(dit)
    finally:
        dit.delete_adapters("trained")
        dit.unload_lora()


def test_a_written_lora_is_listed_in_both_formats_and_reproduces(engine, dit):
    base = dit_probe(dit)
    state, trained = trained_lora(dit)
    assert torch.equal(dit_probe(dit), base) and "layers.0.self_attn.to_q.lora_A.weight" in state
    folder = engine.adapters.folder
    written = write_lora(folder / "drums", state, rank=4, alpha=8, base_variant="base", targets=TARGETS)
    assert written == {"diffusers": folder / "drums", "peft": folder / "drums-peft"}
    found, problems = scan(folder)
    assert problems == {} and sorted(found) == ["drums", "drums-peft"]
    diffusers, peft = found["drums"], found["drums-peft"]
    assert (diffusers.format, peft.format) == ("diffusers", "peft")
    for info in (diffusers, peft):
        assert (info.rank, info.alpha, info.base_variant, info.modules) == (4, 8.0, "base", len(state) // 2)
    assert diffusers.targets == ("to_k", "to_out", "to_q", "to_v")
    assert peft.targets == ("k_proj", "o_proj", "q_proj", "v_proj")
    config = json.loads((folder / "drums-peft" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 4, 8)
    assert sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert config["base_model_name_or_path"] == "checkpoints/acestep-v15-base"
    with safe_open(str(folder / "drums-peft" / "adapter_model.safetensors"), "pt") as handle:
        assert "base_model.model.layers.0.self_attn.o_proj.lora_B.weight" in handle.keys()
    outputs = []
    for name in ("drums", "drums-peft"):
        engine.adapters.apply(((name, 1.0),))
        outputs.append(dit_probe(dit))
    assert torch.equal(outputs[0], outputs[1]) and torch.allclose(outputs[0], trained, atol=1e-5)
    engine.adapters.unload()
    assert torch.equal(dit_probe(dit), base)


def trained_lokr(dit: torch.nn.Module, config: dict) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A LoKr as a LyCORIS network built on diffusers' DiT has it, and the DiT's output with it."""
    from lycoris import LycorisNetwork, create_lycoris

    preset = ("TARGET_REPLACE_MODULE", "TARGET_REPLACE_NAME", "ENABLE_CONV", "USE_FNMATCH")
    saved = {name: getattr(LycorisNetwork, name) for name in preset}  # LyCORIS keeps presets globally
    LycorisNetwork.apply_preset(
        {"target_module": [], "target_name": [r"layers\.\d+\..*attn\.(to_q|to_out\.0)$"]}
    )
    try:
        network = create_lycoris(dit, 1.0, algo="lokr", **config)
    finally:
        for name, value in saved.items():
            setattr(LycorisNetwork, name, value)
    network.apply_to()
    try:
        randomize([p for n, p in sorted(network.named_parameters()) if "lokr_" in n], seed=2)
        return {k: v.detach().clone() for k, v in network.state_dict().items()}, dit_probe(dit)
    finally:
        network.restore()


@pytest.mark.parametrize("dora", [False, True])
def test_a_written_lokr_is_listed_and_reproduces(engine, dit, dora):
    base = dit_probe(dit)
    config = {"linear_dim": 2, "linear_alpha": 3.0, "factor": -1, "dora_wd": dora}
    state, trained = trained_lokr(dit, config)
    assert torch.equal(dit_probe(dit), base) and "lycoris_layers_0_self_attn_to_out_0.lokr_w1" in state
    folder = engine.adapters.folder
    recorded = {
        "lokr_linear_dim": 2,
        "lokr_linear_alpha": 3.0,
        "lokr_factor": -1,
        "lokr_weight_decompose": dora,
    }
    out = write_lokr(folder / "kr", state, {"adapter_type": "lokr"} | recorded, base_variant="base")
    assert out == folder / "kr"
    with safe_open(str(out / LOKR_WEIGHTS), "pt") as handle:
        header, keys = handle.metadata(), set(handle.keys())
    assert (header["algo"], header["format"], header["acestep_base_variant"]) == ("lokr", "lycoris", "base")
    settings = json.loads(header["lokr_config"])
    assert (settings["linear_dim"], settings["linear_alpha"], settings["weight_decompose"]) == (2, 3.0, dora)
    assert settings["target_modules"] == ["o_proj", "q_proj"] and settings["use_tucker"] is False
    assert "lycoris_layers_0_self_attn_o_proj.lokr_w1" in keys  # upstream's names, as its trainer writes
    assert ("lycoris_layers_0_cross_attn_q_proj.dora_scale" in keys) is dora
    info = scan(folder)[0]["kr"]
    assert (info.format, info.rank, info.alpha, info.base_variant) == ("lokr", 2, 3.0, "base")
    assert (info.targets, info.modules) == (("o_proj", "q_proj"), 16)  # self- and cross-attention, 4 layers
    engine.adapters.apply((("kr", 1.0),))
    assert torch.allclose(dit_probe(dit), trained, atol=1e-5)
    engine.adapters.unload()
    engine.adapters.fuse = True
    try:
        engine.adapters.apply((("kr", 1.0),))
        assert torch.allclose(dit_probe(dit), trained, atol=1e-4)
    finally:
        engine.adapters.unload()
        engine.adapters.fuse = False
    assert torch.equal(dit_probe(dit), base)


def test_writes_replace_an_earlier_save_only(tmp_path):
    state = {
        "layers.0.self_attn.to_q.lora_A.weight": torch.ones(2, 32),
        "layers.0.self_attn.to_q.lora_B.weight": torch.ones(32, 2),
    }
    write_lora(tmp_path / "a", state, 2, 2, "base", ["to_q"], formats=("diffusers",))
    write_lora(
        tmp_path / "a", {k: 2 * v for k, v in state.items()}, 2, 4, "base", ["to_q"], formats=("diffusers",)
    )
    assert scan(tmp_path)[0]["a"].alpha == 4.0  # the second save replaced the first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no temporary folder left behind
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds other files"):
        write_lora(tmp_path / "notes", state, 2, 2, "base", ["to_q"])
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (
            lambda out, s: write_lora(out, s, 2, 2, "base", ["to_q"], formats=("ckpt",)),
            "formats must be among",
        ),
        (lambda out, s: write_lora(out, s, 4, 4, "base", ["to_q"]), r"needs a lora_A \[4, in\]"),
        (lambda out, s: write_lora(out, s, 2, 2, "base", ["to_k"]), "'to_q' is not among the targets"),
        (lambda out, s: write_lora(out, s, 2, 2, "", ["to_q"]), "base_variant must name the DiT"),
        (
            lambda out, s: write_lora(
                out, {f"transformer.{k}": v for k, v in s.items()}, 2, 2, "base", ["to_q"]
            ),
            "is not a LoRA key relative to the DiT",
        ),
        (lambda out, s: write_lokr(out, s, {}, "base"), "is not a LyCORIS LoKr key"),
        (
            lambda out, s: write_lokr(
                out,
                {"lycoris_layers_0_self_attn_to_q.lokr_w2_a": torch.ones(8, 3)},
                {"linear_dim": 2},
                "base",
            ),
            "config says LoKr dimension 2, the weights have",
        ),
    ],
)
def test_bad_input_is_refused_with_the_reason(tmp_path, call, needle):
    state = {
        "layers.0.self_attn.to_q.lora_A.weight": torch.ones(2, 32),
        "layers.0.self_attn.to_q.lora_B.weight": torch.ones(32, 2),
    }
    with pytest.raises(ValueError, match=needle):
        call(tmp_path / "out", state)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []
