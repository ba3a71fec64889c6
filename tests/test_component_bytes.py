"""The computed weight bytes (acestep/checkpoints/component_bytes.py) against real modules.

On the tiny model: the bytes computed on the meta device equal the real loaded modules' bytes in
float32 and bfloat16 exactly, and the real storage of the torchao-quantized modules (each
``Int8Tensor``'s ``qdata`` + ``scale``) exactly too (tolerance 0: torchao stores exactly the
int8 elements and one float32 scale per output channel). At the real configurations, the 2B and
XL DiTs in bf16 land near upstream's figures (about 4.7 GB and 9 GB), computed on meta.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderOobleck
from transformers import Qwen3Config, Qwen3ForCausalLM

from acestep.checkpoints import component_bytes as cb
from acestep.checkpoints import convert
from acestep.checkpoints.loading import DIT_CLASSES
from acestep.engine.quantize import LM_KEPT, int8_layout, quantize_module
from acestep.testing import _tiny_text_encoder, tiny_dit_config, tiny_lm_config, tiny_vae_config

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
TINY_LM = tiny_lm_config(vocab_size=300, eos_token_id=1, pad_token_id=0)
TEXT_VOCAB = 259  # the tiny byte-level tokenizer's 256 bytes + 3 special tokens


def real_bytes(module: torch.nn.Module) -> int:
    """What the module's tensors really hold; a torchao subclass counts its inner tensors. The
    silence latent's length comes from the checkpoint file, not the config: not counted."""
    total = 0
    buffers = (t for name, t in module.named_buffers() if not name.endswith("silence_latent"))
    for tensor in {id(t): t for t in (*module.parameters(), *buffers)}.values():
        if hasattr(tensor, "qdata"):
            inner = (tensor.qdata, tensor.scale)
            assert tensor.qdata.dtype == torch.int8 and tensor.scale.dtype == torch.float32
        else:
            inner = (tensor,)
        total += sum(t.untyped_storage().nbytes() for t in inner)
    return total


def tiny_networks() -> dict[str, torch.nn.Module]:
    """The tiny checkpoint's networks (acestep.testing's shapes, float32) and a tiny LM, in memory."""
    configs = convert.component_configs(tiny_dit_config("turbo"))
    modules = {name: cls.from_config(configs[name]) for name, cls in DIT_CLASSES.items()}
    modules["text_encoder"] = _tiny_text_encoder(TEXT_VOCAB)
    modules["vae"] = AutoencoderOobleck(**tiny_vae_config())
    modules["lm"] = Qwen3ForCausalLM(Qwen3Config(**TINY_LM))
    return {name: module.eval() for name, module in modules.items()}


@pytest.fixture(scope="module")
def tiny() -> dict[str, torch.nn.Module]:
    return tiny_networks()


def meta_parts(text_encoder: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The same networks built by component_bytes on the meta device."""
    parts = cb.build_on_meta("dit", tiny_dit_config("turbo"))
    parts |= cb.build_on_meta("text_encoder", text_encoder.config.to_dict())
    parts |= cb.build_on_meta("vae", tiny_vae_config())
    return parts | cb.build_on_meta("lm", TINY_LM)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_computed_bytes_equal_the_loaded_modules(tiny, dtype):
    meta = meta_parts(tiny["text_encoder"])
    assert set(meta) == set(tiny)
    for name, module in tiny.items():
        stored = real_bytes(torch.nn.Module.to(module, dtype=DTYPES[dtype]))
        assert cb.module_bytes(meta[name], DTYPES[dtype]) == stored, name
        torch.nn.Module.to(module, dtype=torch.float32)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.skipif(int8_layout() != "Int8Tensor", reason="byte rules of torchao's Int8Tensor (0.16+)")
def test_int8_bytes_equal_the_torchao_storage(dtype):
    """Fresh networks per dtype, quantized the way the engine does it (acestep/engine/quantize.py)."""
    modules = tiny_networks()
    targets = {name: modules[name] for name in cb.QUANTIZED_PARTS}
    meta = meta_parts(modules["text_encoder"])
    for name, module in targets.items():
        torch.nn.Module.to(module, dtype=DTYPES[dtype])
        before = real_bytes(module)
        quantized = quantize_module(module, "int8", kept=LM_KEPT if name == "lm" else ())
        assert quantized == len(cb.quantized_linears(meta[name])) > 0, name
        computed = cb.module_bytes(meta[name], DTYPES[dtype], "int8")
        assert computed == real_bytes(module) < before, name


def test_only_the_quantized_networks_shrink():
    """int8 changes the transformer, the text encoder and the LM; the rest keep their bytes."""
    for component in cb.COMPONENTS:
        plain = cb.parts_bytes(component, "bfloat16", "none")
        int8 = cb.parts_bytes(component, "bfloat16", "int8")
        for part in plain:
            if part in cb.QUANTIZED_PARTS:
                assert int8[part] < 0.7 * plain[part], (component, part)
            else:
                assert int8[part] == plain[part], (component, part)
    # Floating tensors halve from float32 to bf16; the FSQ's few integer buffers do not.
    halved = 2 * cb.component_bytes("dit-2b", "bfloat16") - cb.component_bytes("dit-2b", "float32")
    assert 0 < halved < 1024


def test_the_real_dits_come_near_upstreams_figures():
    two_b = cb.component_bytes("dit-2b", "bfloat16")
    xl = cb.component_bytes("dit-xl", "bfloat16")
    print(f"\n2B DiT bf16: {two_b:,d} bytes; XL DiT bf16: {xl:,d} bytes")
    for row in cb.table(dtypes=("bfloat16",), modes=("none", "int8")):
        print(f"{row['component']:14s} {row['mode']:5s} {row['bytes'] / 1e9:7.3f} GB")
    # upstream: the 2B DiT is about 4.7 GB in bf16 (2,393,872,518 parameters), XL about 9 GB.
    # ... plus a few hundred bytes of buffers (FSQ levels, rotary tables)
    assert 0 <= two_b - 2 * 2_393_872_518 < 1024
    assert 4.5e9 < two_b < 5.0e9
    assert 8.5e9 < xl < 10.5e9


def test_bad_names_are_refused():
    with pytest.raises(ValueError, match="unknown component"):
        cb.component_bytes("dit-3b")
    with pytest.raises(ValueError, match="dtype must be"):
        cb.component_bytes("dit-2b", "int4")
    with pytest.raises(ValueError, match="mode must be"):
        cb.component_bytes("dit-2b", "bfloat16", "int4")


def test_the_policys_weight_table_is_what_the_configurations_compute():
    """acestep/memory/weight_table.py is data the torch-free policy reads; it must be what the real
    configurations compute (regenerate: python scripts/gen_weight_table.py)."""
    from acestep.memory.weight_table import SHAPES, WEIGHT_BYTES

    assert cb.weight_table() == WEIGHT_BYTES, "regenerate: python scripts/gen_weight_table.py"
    assert cb.shapes() == SHAPES, "regenerate: python scripts/gen_weight_table.py"
    row = WEIGHT_BYTES[("dit-2b", "bfloat16", "none")]
    assert 20 * row["transformer_block"] < row["transformer"] < 30 * row["transformer_block"]  # 24 blocks
