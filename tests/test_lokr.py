"""LoKr (LyCORIS) adapters: found and described by the catalog, attached to a real tiny DiT where
they change its output and scale, unloaded to the exact base, mixed with LoRAs, fused, refused on
another DiT or without LyCORIS, and used by a generation job."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file, save_file

from acestep import AceStep
from acestep.checkpoints import convert
from acestep.lora.catalog import LOKR_WEIGHTS, LoraError, read_lora, scan
from acestep.request import GenerationRequest
from acestep.testing import make_tiny_lokr, make_tiny_lora
from acestep.testing_lora import dit_probe


@pytest.fixture(scope="module")
def lokr_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lokrs")
    make_tiny_lokr(folder / "kr", variant="base", dim=4, seed=1)  # every factor whole
    make_tiny_lokr(folder / "narrow", variant="base", dim=2, alpha=4, seed=2, decompose_both=True)
    # Every Linear and Conv1d of the DiT, as upstream's LoKr training adapts them.
    make_tiny_lokr(folder / "wide", variant="base", dim=2, targets=None, seed=3)
    make_tiny_lokr(folder / "xl", variant="xl-base", dim=2, seed=4)
    make_tiny_lokr(folder / "xl-bare", variant="xl-base", dim=2, seed=5, record_variant=False)
    make_tiny_lora(folder / "drums", layout="diffusers", variant="base", rank=4, seed=6)
    return folder


@pytest.fixture(scope="module")
def shared_engine(upstream_base, lokr_dir):
    engine = AceStep.from_pretrained(upstream_base, device="cpu")
    engine.adapters.directory, engine.adapters.fuse = lokr_dir, False
    return engine


@pytest.fixture
def engine(shared_engine):
    """The module's engine with no adapter loaded and not fused, whatever the test before left."""
    shared_engine.adapters.unload()
    shared_engine.adapters.fuse = False
    return shared_engine


def dit(engine: AceStep) -> torch.Tensor:
    return dit_probe(engine.components.transformer)


def pristine(engine: AceStep) -> bool:
    """No LyCORIS or PEFT trace in the DiT: plain layers running their class's own forward."""
    transformer = engine.components.transformer
    return not any(name.startswith("acestep_lokr_") for name, _ in transformer.named_children()) and all(
        type(module) in (torch.nn.Linear, torch.nn.Conv1d) and "forward" not in module.__dict__
        for name, module in transformer.named_modules()
        if isinstance(module, torch.nn.Linear | torch.nn.Conv1d) or name.endswith(("to_q", "to_out.0"))
    )


def test_the_catalog_describes_lokr_adapters(lokr_dir, tmp_path):
    found, problems = scan(lokr_dir)
    assert problems == {} and sorted(found) == ["drums", "kr", "narrow", "wide", "xl", "xl-bare"]
    kr, narrow, wide = found["kr"], found["narrow"], found["wide"]
    assert (kr.format, kr.base_variant, kr.rank, kr.alpha) == ("lokr", "base", 4, 4.0)
    assert kr.targets == ("k_proj", "o_proj", "q_proj", "v_proj") and kr.path.endswith(f"kr/{LOKR_WEIGHTS}")
    assert kr.modules == found["drums"].modules  # the same attention projections as the LoRA
    assert (narrow.rank, narrow.alpha) == (2, 4.0)
    assert {"proj_in_1", "gate_proj", "time_embed_linear_1", "condition_embedder"} <= set(wide.targets)
    assert (found["xl"].base_variant, found["xl-bare"].base_variant) == ("xl-base", None)
    assert json.loads(json.dumps(kr.as_dict()))["format"] == "lokr"
    # A bare LyCORIS file is recognised by its keys; its alpha is read from the tensors.
    tensors = load_file(str(lokr_dir / "narrow" / LOKR_WEIGHTS))
    save_file(tensors, str(tmp_path / "single.safetensors"))
    single = read_lora(tmp_path / "single.safetensors")
    assert (single.format, single.rank, single.alpha, single.base_variant) == ("lokr", 2, 4.0, None)


def test_damaged_lokr_files_are_reported(lokr_dir, tmp_path):
    tensors = load_file(str(lokr_dir / "narrow" / LOKR_WEIGHTS))
    first = sorted(tensors)[0].rpartition(".")[0]
    half = {k: v for k, v in tensors.items() if not k.startswith(f"{first}.lokr_w2")}
    save_file(half, str(tmp_path / "half.safetensors"))
    save_file(tensors | {f"{first}.lokr_x": torch.ones(1)}, str(tmp_path / "odd.safetensors"))
    (tmp_path / "liar").mkdir()
    config = json.dumps({"linear_dim": 8, "linear_alpha": 4})
    save_file(tensors, str(tmp_path / "liar" / LOKR_WEIGHTS), {"lokr_config": config})
    found, problems = scan(tmp_path)
    assert found == {}
    assert "needs lokr_w2 or both lokr_w2_a and lokr_w2_b" in problems["half.safetensors"]
    assert "is not a LoKr weight" in problems["odd.safetensors"]
    assert "config says LoKr dimension 8, its weights have [2]" in problems["liar"]


def test_a_lokr_changes_the_output_scales_and_unloads_to_the_exact_base(engine):
    transformer = engine.components.transformer
    keys = set(transformer.state_dict())
    base = dit(engine)
    assert engine.adapters.load(["kr"]) == ["kr"] and torch.equal(dit(engine), base)  # loaded, inactive
    full = (engine.adapters.apply((("kr", 1.0),)), dit(engine))[1]
    half = (engine.adapters.apply((("kr", 0.5),)), dit(engine))[1]
    assert not torch.equal(full, base) and 0 < (half - base).abs().max() < (full - base).abs().max()
    engine.adapters.apply((("kr", 0.0),))
    assert torch.equal(dit(engine), base)  # scale 0: no adapter
    engine.adapters.apply((("kr", 1.0),))
    assert torch.equal(dit(engine), full)  # reproduces
    assert engine.adapters.status()["loaded"][0]["format"] == "lokr" and engine.adapters.nbytes() > 0
    assert engine.placement()["lora"] == "cpu"
    assert engine.adapters.unload() == ["kr"]
    assert torch.equal(dit(engine), base) and pristine(engine) and set(transformer.state_dict()) == keys
    assert engine.placement()["lora"] == "unloaded"


def test_upstream_names_adapt_the_layers_they_name(engine, lokr_dir):
    """A file with upstream's names (``o_proj``, ``proj_in_1``...) changes the DiT as adding each
    LoKr delta, kron(w1, w2) * alpha / dim, to the weight of the layer that name means does."""
    base = dit(engine)
    engine.adapters.apply((("wide", 1.0),))
    adapted = dit(engine)
    engine.adapters.unload()
    tensors = load_file(str(lokr_dir / "wide" / LOKR_WEIGHTS))
    assert "lycoris_proj_in_1.lokr_w1" in tensors and "lycoris_layers_0_self_attn_o_proj.alpha" in tensors
    transformer = engine.components.transformer
    originals = {}
    with torch.no_grad():
        for path, module in transformer.named_modules():
            if not isinstance(module, torch.nn.Linear | torch.nn.Conv1d):
                continue
            upstream = convert.upstream_key("transformer", f"{path}.weight").removeprefix("decoder.")
            name = "lycoris_" + upstream.removesuffix(".weight").replace(".", "_")
            weight = module.weight
            w1 = tensors[f"{name}.lokr_w1"]
            w2 = tensors.get(f"{name}.lokr_w2")
            w2 = tensors[f"{name}.lokr_w2_a"] @ tensors[f"{name}.lokr_w2_b"] if w2 is None else w2
            w2 = w2.reshape(w2.shape[0], -1, *weight.shape[2:])
            w1 = w1.reshape(*w1.shape, *[1] * (weight.dim() - 2))
            originals[path] = weight.clone()
            weight += torch.kron(w1, w2) * tensors[f"{name}.alpha"] / 2
        try:
            assert len(originals) == 52 and torch.allclose(dit(engine), adapted, atol=1e-4)
        finally:
            for path, weight in originals.items():
                transformer.get_submodule(path).weight.copy_(weight)
    assert torch.equal(dit(engine), base)


def test_lokr_and_lora_mix_in_one_set(engine):
    base = dit(engine)
    outputs = {}
    for selection in ((("kr", 1.0),), (("drums", 1.0),), (("kr", 1.0), ("drums", 0.5))):
        engine.adapters.apply(selection)
        outputs[selection] = dit(engine)
    kr, drums, both = outputs.values()
    assert len({tuple(o.flatten().tolist()) for o in (base, kr, drums, both)}) == 4
    engine.adapters.apply((("drums", 0.5), ("kr", 1.0)))  # the other order: the same set
    assert torch.allclose(dit(engine), both, atol=1e-6)
    engine.adapters.unload(["drums"])  # the last LoRA goes: its PEFT layers too, the LoKr stays
    engine.adapters.apply((("kr", 1.0),))
    assert torch.equal(dit(engine), kr)
    engine.adapters.apply((("drums", 1.0),))  # a LoRA attached beside an inactive LoKr
    assert torch.equal(dit(engine), drums)
    engine.adapters.unload()
    assert torch.equal(dit(engine), base) and pristine(engine)


def test_fused_lokrs_match_runtime_and_restore_the_exact_base(engine):
    base = dit(engine)
    runtime = {}
    selections = ((("narrow", 0.7),), (("wide", 1.0), ("drums", 0.5)))
    for selection in selections:
        engine.adapters.apply(selection)
        runtime[selection] = dit(engine)
    engine.adapters.unload()
    engine.adapters.fuse = True
    for selection in selections:
        engine.adapters.apply(selection)
        assert engine.adapters.status()["fused"]
        fused = dit(engine)
        assert torch.allclose(fused, runtime[selection], atol=1e-4) and not torch.equal(fused, base)
    engine.adapters.apply(())
    assert torch.equal(dit(engine), base)  # the originals copied back, not subtracted
    engine.adapters.unload()
    assert torch.equal(dit(engine), base) and pristine(engine)


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("xl", "trained on the xl-base DiT; this model is base (an XL adapter on a 2B DiT"),
        ("xl-bare", "made for another DiT: layers.0.cross_attn.to_k is [16, 32] in this base DiT"),
    ],
)
def test_a_lokr_for_another_dit_is_refused(engine, name, needle):
    base = dit(engine)
    with pytest.raises(LoraError, match=needle.replace("(", r"\(").replace("[", r"\[")):
        engine.adapters.apply(((name, 1.0),))
    assert not engine.adapters.loaded and pristine(engine) and torch.equal(dit(engine), base)


def test_a_lokr_naming_layers_the_dit_lacks_is_refused(engine, lokr_dir, tmp_path):
    tensors = load_file(str(lokr_dir / "kr" / LOKR_WEIGHTS))
    extra = {k.replace("layers_0_", "layers_9_"): v.clone() for k, v in tensors.items() if "layers_0_" in k}
    (tmp_path / "deep").mkdir()
    save_file(tensors | extra, str(tmp_path / "deep" / LOKR_WEIGHTS))
    engine.adapters.directory = tmp_path
    try:
        with pytest.raises(LoraError, match="adapts layers_9_cross_attn_k_proj, which this DiT"):
            engine.adapters.load(["deep"])
    finally:
        engine.adapters.directory = lokr_dir
    assert not engine.adapters.loaded and pristine(engine)


def test_without_lycoris_a_lokr_is_refused_and_still_listed(engine, lokr_dir, monkeypatch):
    base = dit(engine)
    monkeypatch.setitem(sys.modules, "lycoris", None)  # what an install without acestep[train] has
    assert read_lora(lokr_dir / "kr").format == "lokr"  # the catalog never needs it
    with pytest.raises(LoraError, match=r"install acestep\[train\]"):
        engine.adapters.apply((("kr", 1.0),))
    assert not engine.adapters.loaded and torch.equal(dit(engine), base)


def test_a_generation_job_runs_with_a_lokr(engine, lokr_dir, tmp_path):
    def audio(lora=None, scale=1.0) -> np.ndarray:
        request = GenerationRequest(
            caption="tight drums", audio_duration=3.0, seed=7, batch_size=1, inference_steps=4,
            audio_format="wav32", lora=lora, lora_scale=scale,
        )  # fmt: skip
        result = engine.generate(request, tmp_path / f"job{len(list(tmp_path.iterdir()))}")
        assert result.metas["lora"] == [{"name": n, "scale": s} for n, s in request.adapters]
        return sf.read(result.items[0].path, dtype="float32")[0]

    before = audio()
    with_lokr = audio("narrow", 0.8)
    assert not np.array_equal(with_lokr, before)
    assert np.array_equal(audio(), before) and np.array_equal(audio("narrow", 0.8), with_lokr)
    engine.adapters.unload()
    assert np.array_equal(audio(), before)
    shutil.rmtree(tmp_path, ignore_errors=True)
