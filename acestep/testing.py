"""Tiny, deterministic ACE-Step checkpoints and synthetic audio for tests, demos and CI.

:func:`make_tiny_checkpoint` writes a complete checkpoint in either folder layout with every
component at a tiny size that keeps the real structure: GQA attention, alternating
sliding-window / full layers, 2x patching, the 5 Hz audio tokenizer (FSQ) and detokenizer, an
Oobleck VAE with the real 1920-sample hop (so 25 latent frames per second), and a Qwen3 text
encoder with a byte-level tokenizer that needs no download. Same seed, same bytes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from acestep.testing_lora import make_tiny_lokr as make_tiny_lokr
from acestep.testing_lora import make_tiny_lora as make_tiny_lora

TINY_LATENT_DIM = 8
TINY_SILENCE_FRAMES = 400  # 16 s; longer targets exercise silence-latent tiling
SAMPLE_RATE = 48000
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


# An XL DiT is wider and deeper than the 2B one, and its config gives the condition encoder its own
# (narrower) widths with ``encoder_*`` keys, as upstream's XL configs do (2560 vs 2048 wide).
TINY_XL = {
    "hidden_size": 48,
    "intermediate_size": 96,
    "num_hidden_layers": 6,
    "layer_types": ["sliding_attention", "full_attention"] * 3,
    "num_attention_heads": 6,
    "encoder_hidden_size": 32,
    "encoder_intermediate_size": 64,
    "encoder_num_attention_heads": 4,
    "encoder_num_key_value_heads": 2,
}
VARIANTS = ("turbo", "base", "sft", "xl-turbo", "xl-base", "xl-sft")


def tiny_dit_config(variant: str = "turbo") -> dict:
    """An upstream-style DiT ``config.json`` at tiny size; ``xl-*`` variants have XL's shape (the
    folder name ``acestep-v15-xl-*`` marks them XL, as upstream's names do)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    dim = TINY_LATENT_DIM
    family = variant.removeprefix("xl-")
    config = {
        "architectures": ["AceStepConditionGenerationModel"],
        "model_type": "acestep",
        "model_version": family,
        "is_turbo": family == "turbo",
        "dtype": "float32",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 4,
        "layer_types": ["sliding_attention", "full_attention"] * 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "use_sliding_window": True,
        "sliding_window": 16,
        "in_channels": 3 * dim,
        "audio_acoustic_hidden_dim": dim,
        "patch_size": 2,
        "text_hidden_dim": 16,
        "timbre_hidden_dim": dim,
        "timbre_fix_frame": 750,
        "num_lyric_encoder_hidden_layers": 2,
        "num_timbre_encoder_hidden_layers": 2,
        "num_attention_pooler_hidden_layers": 2,
        "pool_window_size": 5,
        "fsq_dim": 32,
        "fsq_input_levels": [8, 8, 8, 5, 5, 5],
        "fsq_input_num_quantizers": 1,
        "vocab_size": 64003,
    }
    return config | TINY_XL if variant.startswith("xl-") else config


def tiny_vae_config() -> dict:
    return {
        "encoder_hidden_size": 2 * TINY_LATENT_DIM,
        "downsampling_ratios": [2, 4, 4, 6, 10],
        "channel_multiples": [1, 2, 2, 2, 2],
        "decoder_channels": 4,
        "decoder_input_channels": TINY_LATENT_DIM,
        "audio_channels": 2,
        "sampling_rate": SAMPLE_RATE,
    }


def _byte_level_backend():
    """A byte-level BPE with no merges (every byte one token) and the Qwen special tokens."""
    from tokenizers import Tokenizer, decoders, models
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = {ch: i for i, ch in enumerate(sorted(ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return backend


def _tiny_tokenizer():
    from transformers import PreTrainedTokenizerFast

    backend = _byte_level_backend()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=131072,
    )


def _tiny_text_encoder(vocab_size: int):
    from transformers import Qwen3Config, Qwen3Model

    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=4096,
        rope_theta=1000000.0,
        tie_word_embeddings=False,
        architectures=["Qwen3Model"],
    )
    return Qwen3Model(config)


def fill_random(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Overwrite every parameter with seeded values of a sane scale, in sorted-name order."""
    params = dict(module.named_parameters())
    for name in sorted(params):
        param = params[name]
        shape = param.shape
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("alpha", "beta"):  # Snake activations (log-scale)
            value = 0.1 * noise
        elif leaf == "weight_g":  # weight norm magnitude
            value = 0.8 + 0.2 * noise.abs()
        elif param.dim() == 1 and "norm" in name:
            value = 1.0 + 0.05 * noise
        elif param.dim() == 1:
            value = 0.02 * noise
        else:
            fan_in = math.prod(shape[1:]) if param.dim() > 1 else shape[-1]
            value = noise / math.sqrt(max(fan_in, 1))
        with torch.no_grad():
            param.copy_(value)


def _build_components(variant: str, seed: int) -> dict:
    from diffusers import AutoencoderOobleck

    from acestep.checkpoints import convert
    from acestep.checkpoints.loading import DIT_CLASSES

    generator = torch.Generator().manual_seed(seed)
    dit_config = tiny_dit_config(variant)
    configs = convert.component_configs(dit_config)
    modules = {name: cls.from_config(configs[name]) for name, cls in DIT_CLASSES.items()}
    tokenizer = _tiny_tokenizer()
    modules["text_encoder"] = _tiny_text_encoder(len(tokenizer))
    modules["vae"] = AutoencoderOobleck(**tiny_vae_config())
    for name in sorted(modules):
        fill_random(modules[name], generator)
        modules[name].eval()
    # The silence latent is what the VAE makes of digital silence, as upstream's is meant to be.
    with torch.no_grad():
        silence = torch.zeros(1, 2, TINY_SILENCE_FRAMES * 1920)
        latent = modules["vae"].encode(silence).latent_dist.mean  # [1, C, T]
    modules["condition_encoder"].register_buffer("silence_latent", latent.transpose(1, 2).contiguous())
    return {"modules": modules, "tokenizer": tokenizer, "dit_config": dit_config, "silence": latent}


def make_tiny_checkpoint(
    path: str | Path, layout: str = "upstream", variant: str = "turbo", seed: int = 0, shards: int = 1
) -> Path:
    """Write a tiny random checkpoint and return the path to pass to ``AceStep.from_pretrained``.

    ``layout="upstream"`` writes a ``checkpoints/`` root (``acestep-v15-<variant>/``, ``vae/``,
    ``Qwen3-Embedding-0.6B/``); ``layout="diffusers"`` writes a saved ``AceStepPipeline``.
    ``shards > 1`` splits the DiT weights as the XL repos ship them (``model-0000i-of-0000n``
    files and ``model.safetensors.index.json``).
    """
    if layout not in ("upstream", "diffusers"):
        raise ValueError(f"layout must be 'upstream' or 'diffusers', got {layout!r}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode(False):
        built = _build_components(variant, seed)
    if layout == "upstream":
        _write_upstream(path, variant, built, shards)
    else:
        _write_diffusers(path, built)
    return path


def _write_upstream(root: Path, variant: str, built: dict, shards: int = 1) -> None:
    from acestep.checkpoints import convert

    modules = built["modules"]
    dit_dir = root / f"acestep-v15-{variant}"
    dit_dir.mkdir(parents=True, exist_ok=True)
    parts = {name: modules[name].state_dict() for name in convert.PREFIX_TO_COMPONENT.values()}
    state = {k: v.contiguous() for k, v in convert.join_to_upstream_state_dict(parts).items()}
    if shards <= 1:
        save_file(state, str(dit_dir / "model.safetensors"), metadata={"format": "pt"})
    else:
        keys, weight_map = sorted(state), {}
        for i in range(shards):
            name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            part = {k: state[k] for k in keys[i::shards]}
            save_file(part, str(dit_dir / name), metadata={"format": "pt"})
            weight_map |= dict.fromkeys(part, name)
        index = {"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}
        (dit_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (dit_dir / "config.json").write_text(json.dumps(built["dit_config"], indent=2, sort_keys=True) + "\n")
    torch.save(built["silence"].clone(), dit_dir / "silence_latent.pt")
    modules["vae"].save_pretrained(root / "vae", safe_serialization=True)
    text_dir = root / "Qwen3-Embedding-0.6B"
    modules["text_encoder"].save_pretrained(text_dir, safe_serialization=True)
    built["tokenizer"].save_pretrained(text_dir)


def _write_diffusers(root: Path, built: dict) -> None:
    from diffusers import AceStepPipeline, FlowMatchEulerDiscreteScheduler

    pipe = AceStepPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0),
        tokenizer=built["tokenizer"],
        **built["modules"],
    )
    pipe.save_pretrained(root, safe_serialization=True)


def synthetic_audio(
    seconds: float, seed: int = 0, sample_rate: int = SAMPLE_RATE, channels: int = 2
) -> np.ndarray:
    """A deterministic test signal [samples, channels]: a chord with a beat, plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    tone = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.18, 329.63)) / 3
    beat = (np.sin(2 * np.pi * 2.0 * t) > 0.9).astype(np.float64) * np.sin(2 * np.pi * 60.0 * t)
    mono = 0.5 * tone + 0.3 * beat + 0.01 * rng.standard_normal(t.shape)
    out = np.stack([mono * (1.0 - 0.2 * c) for c in range(channels)], axis=1)
    return out.astype(np.float32)


# The 5 Hz LM's chat template, ChatML as Qwen3 renders it (no tools, no thinking switch).
TINY_LM_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)
LM_AUDIO_CODE_TOKENS = 65535  # <|audio_code_0|> .. <|audio_code_65534|>, as the shipped tokenizer


def _tiny_lm_tokenizer(audio_codes: int):
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    backend = _byte_level_backend()
    plain = [AddedToken(t, special=False, normalized=False) for t in ("<think>", "</think>")]
    plain += [AddedToken(f"<|audio_code_{n}|>", special=False, normalized=False) for n in range(audio_codes)]
    backend.add_tokens(plain)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=131072,
    )
    tokenizer.chat_template = TINY_LM_CHAT_TEMPLATE
    return tokenizer


def tiny_lm_config(vocab_size: int, eos_token_id: int, pad_token_id: int) -> dict:
    """A Qwen3 causal-LM ``config.json`` at tiny size (the real ones are 0.6B, 1.7B and 4B)."""
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "max_position_embeddings": 8192,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "torch_dtype": "float32",
    }


def make_tiny_lm(
    path: str | Path, size: str = "1.7B", seed: int = 0, audio_codes: int = LM_AUDIO_CODE_TOKENS
) -> Path:
    """Write a tiny random 5 Hz LM folder and return it.

    ``path`` is a checkpoints root (the LM lands in ``acestep-5Hz-lm-<size>/``, beside the folders
    :func:`make_tiny_checkpoint` writes) or a folder already named ``acestep-5Hz-lm-*``. The
    tokenizer holds ``<think>``, ``</think>`` and ``audio_codes`` code tokens (the shipped one has
    65,535, of which 0..63999 are valid) and a ChatML chat template. Same seed, same bytes.
    """
    from transformers import Qwen3Config, Qwen3ForCausalLM

    path = Path(path)
    folder = path if path.name.startswith("acestep-5Hz-lm-") else path / f"acestep-5Hz-lm-{size}"
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _tiny_lm_tokenizer(audio_codes)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen3Config(**tiny_lm_config(len(tokenizer), eos, pad))
    with torch.inference_mode(False):
        model = Qwen3ForCausalLM(config)
        fill_random(model, torch.Generator().manual_seed(seed))
    model.eval()
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
