"""The LoRA catalog: tiny adapters from ``acestep.testing`` in both formats are found and described;
damaged, pickled or inconsistent ones are reported with the reason and never stop the scan."""

from __future__ import annotations

import json

import pytest
from safetensors.numpy import load_file, save_file

from acestep.lora.catalog import LoraError, lora_dir, read_lora, scan, variant_tag
from acestep.testing import make_tiny_lora


@pytest.fixture
def loras(tmp_path):
    make_tiny_lora(tmp_path / "drums", layout="diffusers", variant="base", rank=4, alpha=8)
    make_tiny_lora(tmp_path / "voice", layout="peft", variant="turbo", rank=2)
    return tmp_path


def test_both_formats_are_found_with_their_metadata(loras):
    found, problems = scan(loras)
    assert problems == {} and sorted(found) == ["drums", "voice"]
    drums, voice = found["drums"], found["voice"]
    assert (drums.format, drums.base_variant, drums.rank, drums.alpha) == ("diffusers", "base", 4, 8.0)
    assert drums.targets == ("to_k", "to_out", "to_q", "to_v") and drums.path.endswith("drums.safetensors")
    assert (voice.format, voice.base_variant, voice.rank, voice.alpha) == ("peft", "turbo", 2, 2.0)
    assert voice.targets == ("k_proj", "o_proj", "q_proj", "v_proj")
    assert voice.path.endswith("voice/adapter_model.safetensors")
    # Every attention projection of every layer of the tiny DiT, self- and cross-attention.
    assert drums.modules == voice.modules and drums.modules % 8 == 0
    assert json.loads(json.dumps(drums.as_dict()))["targets"] == list(drums.targets)


def test_the_base_variant_comes_from_the_header_or_a_dit_folder_name(tmp_path):
    bare = read_lora(make_tiny_lora(tmp_path / "bare", variant="base", record_variant=False))
    assert bare.base_variant is None  # not recorded anywhere: unknown, not guessed
    peft = read_lora(make_tiny_lora(tmp_path / "peft", layout="peft", variant="base", record_variant=False))
    assert peft.base_variant is None
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "/models/checkpoints/acestep-v15-xl-base"
    (tmp_path / "peft" / "adapter_config.json").write_text(json.dumps(config))
    assert read_lora(tmp_path / "peft").base_variant == "xl-base"
    assert variant_tag("acestep-v15-turbo") == "turbo" and variant_tag("acestep-v15-sft") == "sft"
    assert variant_tag("decoder") is None


def test_bad_adapters_are_reported_and_the_rest_still_listed(loras):
    (loras / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    (loras / "old.pt").write_bytes(b"\x80\x04pickle")
    (loras / "notes.txt").write_text("ignored")
    tensors = load_file(str(loras / "drums.safetensors"))
    half = {k: v for k, v in tensors.items() if "lora_B" not in k or ".layers.0." not in k}
    save_file(half, str(loras / "half.safetensors"))
    save_file(tensors | {"transformer.layers.0.extra.weight": tensors[next(iter(tensors))]},
              str(loras / "mixed.safetensors"))  # fmt: skip
    (loras / "empty").mkdir()
    make_tiny_lora(loras / "liar", layout="peft", rank=2)
    config = json.loads((loras / "liar" / "adapter_config.json").read_text())
    (loras / "liar" / "adapter_config.json").write_text(json.dumps(config | {"r": 16}))
    found, problems = scan(loras)
    assert sorted(found) == ["drums", "voice"]
    assert "not a readable safetensors file" in problems["broken.safetensors"]
    assert "pickles and are not loaded" in problems["old.pt"]
    assert "needs a lora_A [r, in] and a lora_B [out, r]" in problems["half.safetensors"]
    assert "is not a LoRA weight" in problems["mixed.safetensors"]
    assert "no pytorch_lora_weights.safetensors" in problems["empty"]
    assert "config says rank 16, its weights have rank 2" in problems["liar"]
    assert "notes.txt" not in problems
    with pytest.raises(LoraError, match="pickles"):
        read_lora(loras / "old.pt")


def test_two_adapters_with_one_name_are_refused(tmp_path):
    make_tiny_lora(tmp_path / "same", layout="diffusers")
    make_tiny_lora(tmp_path / "same", layout="peft")
    found, problems = scan(tmp_path)
    assert list(found) == ["same"] and "two adapters have this name" in next(iter(problems.values()))


def test_the_lora_folder_setting(tmp_path):
    assert lora_dir({"ACESTEP_LORA_DIR": str(tmp_path / "x")}) == tmp_path / "x"
    assert lora_dir({"ACESTEP_PROJECT_ROOT": str(tmp_path)}) == tmp_path / "loras"
    assert scan(tmp_path / "missing") == ({}, {})
