"""The weight bytes of each network at the real configurations, per dtype and quantization mode.

Computed, not guessed: each network is built from upstream's published configuration on the meta
device (shapes only, no memory, no download) and its parameters and buffers are summed by kind:

- floating tensors count at the compute dtype (float32: 4 bytes, bfloat16/float16: 2);
- under a quantization mode (``int8``, ``fp8``, ``w8a8``; acestep/memory/quantization.py) each
  ``nn.Linear`` weight of the quantized networks (:data:`QUANTIZED_PARTS`) counts 1 byte per
  element plus its per-output-channel float32 scale, which is how torchao stores them
  (``Int8Tensor``: ``qdata`` int8 [out, in] + ``scale`` float32 [out, 1]); biases, norms,
  embeddings and convolutions stay at the compute dtype;
- a linear whose weight is tied to another module (the LMs' ``lm_head`` shares the embedding) is
  not quantized: a quantized copy would add bytes, not save them;
- integer buffers keep their own dtype.

The condition encoder's ``silence_latent`` buffer is sized by the checkpoint's file, not the
configuration, so it is not counted (a few MB at most: frames x 64 channels).
tests/test_component_bytes.py checks the rules against real loaded and torchao-quantized modules
on the tiny model; ``python bench/bench_quantize.py`` measures the real sizes with random weights.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping

import torch
from diffusers import AutoencoderOobleck
from diffusers.models.transformers.ace_step_transformer import AceStepTransformer1DModel
from diffusers.pipelines.ace_step.modeling_ace_step import (
    AceStepAudioTokenDetokenizer,
    AceStepAudioTokenizer,
    AceStepConditionEncoder,
)
from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model

from acestep.checkpoints.convert import component_configs
from acestep.memory.quantization import MODES, NONE

# upstream's published DiT config.json (acestep-v15-turbo / -base / -sft share the shapes).
DIT_2B = {
    "hidden_size": 2048,
    "intermediate_size": 6144,
    "num_hidden_layers": 24,
    "layer_types": ["sliding_attention", "full_attention"] * 12,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "use_sliding_window": True,
    "sliding_window": 128,
    "in_channels": 192,
    "audio_acoustic_hidden_dim": 64,
    "patch_size": 2,
    "text_hidden_dim": 1024,
    "timbre_hidden_dim": 64,
    "timbre_fix_frame": 750,
    "num_lyric_encoder_hidden_layers": 8,
    "num_timbre_encoder_hidden_layers": 4,
    "num_attention_pooler_hidden_layers": 2,
    "pool_window_size": 5,
    "fsq_dim": 2048,
    "fsq_input_levels": [8, 8, 8, 5, 5, 5],
    "fsq_input_num_quantizers": 1,
}
# The 4B XL DiTs: a wider, deeper decoder; the condition encoder keeps the 2B widths.
DIT_XL = DIT_2B | {
    "hidden_size": 2560,
    "intermediate_size": 9728,
    "num_hidden_layers": 32,
    "layer_types": ["sliding_attention", "full_attention"] * 16,
    "num_attention_heads": 32,
    "encoder_hidden_size": 2048,
    "encoder_intermediate_size": 6144,
    "encoder_num_attention_heads": 16,
    "encoder_num_key_value_heads": 8,
}
VAE = {
    "encoder_hidden_size": 128,
    "downsampling_ratios": [2, 4, 4, 6, 10],
    "channel_multiples": [1, 2, 4, 8, 16],
    "decoder_channels": 128,
    "decoder_input_channels": 64,
    "audio_channels": 2,
    "sampling_rate": 48000,
}
TEXT_ENCODER = {  # Qwen3-Embedding-0.6B
    "vocab_size": 151669,
    "hidden_size": 1024,
    "intermediate_size": 3072,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
}
# The 5 Hz LMs: Qwen3 base shapes with Qwen3's 151,669 tokens + 65,535 audio-code tokens (docs/lm.md).
LM_VOCAB = 217204
_LM_SHARED = {
    "vocab_size": LM_VOCAB,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40960,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
}
_LM_WIDTHS = {  # size -> hidden, intermediate, layers, attention heads
    "0.6B": (1024, 3072, 28, 16),
    "1.7B": (2048, 6144, 28, 16),
    "4B": (2560, 9728, 36, 32),
}
_LM_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
LMS = {size: _LM_SHARED | dict(zip(_LM_KEYS, widths, strict=True)) for size, widths in _LM_WIDTHS.items()}

DIT_PARTS = {
    "transformer": AceStepTransformer1DModel,
    "condition_encoder": AceStepConditionEncoder,
    "audio_tokenizer": AceStepAudioTokenizer,
    "audio_token_detokenizer": AceStepAudioTokenDetokenizer,
}
# Component name -> (kind, configuration). The DiT's rows are the sum of its four parts.
COMPONENTS: dict[str, tuple[str, dict]] = {
    "dit-2b": ("dit", DIT_2B),
    "dit-xl": ("dit", DIT_XL),
    "text_encoder": ("text_encoder", TEXT_ENCODER),
    "vae": ("vae", VAE),
    **{f"lm-{size}": ("lm", config) for size, config in LMS.items()},
}
# The networks a quantization mode applies to (acestep/engine/quantize.py): the DiT's transformer,
# the text encoder and the LM. The condition encoder (whose lyric encoder fp16-mixed keeps in
# float32), the audio tokenizer and detokenizer, and the VAE keep the compute dtype.
QUANTIZED_PARTS = ("transformer", "text_encoder", "lm")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
UNCOUNTED_BUFFERS = ("silence_latent",)  # its length comes from silence_latent.pt
SCALE_BYTES = 4  # torchao keeps the per-channel scale in float32 whatever the weights' dtype
QUANTIZED_ELEMENT_BYTES = 1  # int8 and float8 alike


def build_on_meta(kind: str, config: Mapping) -> dict[str, torch.nn.Module]:
    """The networks of one component, by part, built on the meta device from ``config``."""
    config = dict(config)
    with torch.device("meta"):
        if kind == "dit":
            configs = component_configs(config)
            return {name: cls.from_config(configs[name]) for name, cls in DIT_PARTS.items()}
        if kind == "text_encoder":
            return {"text_encoder": Qwen3Model(Qwen3Config(**config))}
        if kind == "lm":
            return {"lm": Qwen3ForCausalLM(Qwen3Config(**config))}
        if kind == "vae":
            return {"vae": AutoencoderOobleck(**config)}
    raise ValueError(f"unknown component kind {kind!r}")


def quantized_linears(module: torch.nn.Module) -> list[str]:
    """The names of the linears a quantization mode stores in 1 byte: every ``nn.Linear`` whose
    weight no other module shares (a tied ``lm_head`` stays as it is)."""
    owners: dict[int, int] = {}
    for sub in module.modules():
        for param in sub.parameters(recurse=False):
            owners[id(param)] = owners.get(id(param), 0) + 1
    return [
        name
        for name, sub in module.named_modules()
        if isinstance(sub, torch.nn.Linear) and owners[id(sub.weight)] == 1
    ]


def _tensor_bytes(tensor: torch.Tensor, dtype: torch.dtype) -> int:
    if tensor.is_floating_point():
        return tensor.numel() * dtype.itemsize
    return tensor.numel() * tensor.element_size()


def module_bytes(module: torch.nn.Module, dtype: torch.dtype, mode: str = NONE) -> int:
    """The bytes ``module`` holds once stored in ``dtype`` and quantized with ``mode``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    quantized: set[int] = set()
    total = 0
    if mode != NONE:
        for name in quantized_linears(module):
            weight = module.get_submodule(name).weight
            quantized.add(id(weight))
            total += weight.numel() * QUANTIZED_ELEMENT_BYTES + weight.shape[0] * SCALE_BYTES
    seen = set(quantized)
    buffers = (t for name, t in module.named_buffers() if name.rsplit(".", 1)[-1] not in UNCOUNTED_BUFFERS)
    for tensor in (*module.parameters(), *buffers):
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += _tensor_bytes(tensor, dtype)
    return total


@functools.cache
def _parts_bytes_cached(kind: str, config_json: str, dtype: str, mode: str) -> tuple[tuple[str, int], ...]:
    modules = build_on_meta(kind, json.loads(config_json))
    return tuple(
        (name, module_bytes(module, DTYPES[dtype], mode if name in QUANTIZED_PARTS else NONE))
        for name, module in modules.items()
    )


def parts_bytes(component: str, dtype: str = "bfloat16", mode: str = NONE) -> dict[str, int]:
    """Bytes per network of a component (the DiT: transformer, condition encoder, audio
    tokenizer and detokenizer). Only :data:`QUANTIZED_PARTS` change with ``mode``."""
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r}; one of {', '.join(COMPONENTS)}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    kind, config = COMPONENTS[component]
    return dict(_parts_bytes_cached(kind, json.dumps(config, sort_keys=True), dtype, mode))


def component_bytes(component: str, dtype: str = "bfloat16", mode: str = NONE) -> int:
    """The weight bytes of ``component`` stored in ``dtype`` and quantized with ``mode``."""
    return sum(parts_bytes(component, dtype, mode).values())


def table(dtypes: tuple[str, ...] = ("float32", "bfloat16"), modes: tuple[str, ...] = MODES) -> list[dict]:
    """One row per component, dtype and mode (what docs/memory.md and the benchmark print)."""
    return [
        {
            "component": component,
            "dtype": dtype,
            "mode": mode,
            "bytes": component_bytes(component, dtype, mode),
        }
        for component in COMPONENTS
        for dtype in dtypes
        for mode in modes
    ]


# The table the torch-free memory policy reads (acestep/memory/weight_table.py, written by
# scripts/gen_weight_table.py): float16 stores as bfloat16 does, fp8 and w8a8 as int8 does.
TABLE_DTYPES = ("float32", "bfloat16")
TABLE_MODES = (NONE, "int8")


@functools.cache
def _block_bytes_cached(kind: str, config_json: str, dtype: str, mode: str) -> int:
    transformer = build_on_meta(kind, json.loads(config_json))["transformer"]
    return max(module_bytes(layer, DTYPES[dtype], mode) for layer in transformer.layers)


def block_bytes(component: str, dtype: str = "bfloat16", mode: str = NONE) -> int:
    """The bytes of the DiT transformer's largest block: what streamed offload holds on the GPU
    at a time, one group of one block (acestep/memory/streaming.py)."""
    kind, config = COMPONENTS[component]
    if kind != "dit":
        raise ValueError(f"{component} has no transformer blocks")
    return _block_bytes_cached(kind, json.dumps(config, sort_keys=True), dtype, mode)


def weight_table() -> dict[tuple[str, str, str], dict[str, int]]:
    """Bytes per part of every component in :data:`TABLE_DTYPES` x :data:`TABLE_MODES`; a DiT's
    row also carries ``transformer_block`` (:func:`block_bytes`)."""
    rows: dict[tuple[str, str, str], dict[str, int]] = {}
    for component, (kind, _) in COMPONENTS.items():
        for dtype in TABLE_DTYPES:
            for mode in TABLE_MODES:
                row = parts_bytes(component, dtype, mode)
                if kind == "dit":
                    row["transformer_block"] = block_bytes(component, dtype, mode)
                rows[(component, dtype, mode)] = row
    return rows


SHAPE_KEYS = {
    "dit": ("hidden_size", "intermediate_size", "num_hidden_layers", "patch_size"),
    "lm": ("num_hidden_layers", "num_key_value_heads", "head_dim"),
}


def shapes() -> dict[str, dict[str, int]]:
    """The widths the policy's working-memory estimates use (DiT activations, the LM's KV cache)."""
    return {
        component: {key: int(config[key]) for key in SHAPE_KEYS[kind]}
        for component, (kind, config) in COMPONENTS.items()
        if kind in SHAPE_KEYS
    }
