"""The real model configurations with random weights, built in memory on the benchmark device.

Random weights cost the same time and memory as trained ones; nothing is downloaded. One set of
networks serves both the stock diffusers ``AceStepPipeline`` and acestep's engine, so the two
are timed on the very same modules.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AceStepPipeline, AutoencoderOobleck, FlowMatchEulerDiscreteScheduler
from transformers import Qwen3Config, Qwen3Model

from acestep import AceStep
from acestep.checkpoints import CheckpointPaths, Components, convert, detect_variant
from acestep.checkpoints.loading import DIT_CLASSES
from acestep.memory.component_bytes import DIT_2B, DIT_XL, TEXT_ENCODER, VAE
from acestep.memory.devices import apply_vram_cap
from acestep.memory.limits import Limits
from acestep.memory.mixed import apply_plan
from acestep.memory.precision import PrecisionPlan
from acestep.memory.residency import plan_for, resident_plan
from acestep.testing import _build_components, _tiny_tokenizer, tiny_dit_config

# upstream's published configs (the 2B and XL DiTs, the VAE, the text encoder) are declared once,
# where the memory policy computes their bytes.
# --config -> (DiT folder name, variant, DiT config)
CONFIGS = {
    "2b-turbo": ("acestep-v15-turbo", "turbo", DIT_2B),
    "2b-base": ("acestep-v15-base", "base", DIT_2B),
    "xl-turbo": ("acestep-v15-xl-turbo", "turbo", DIT_XL),
    # acestep.testing's tiny networks: the whole benchmark path in seconds on a CPU (CI).
    "tiny-turbo": ("acestep-v15-turbo", "turbo", None),
    "tiny-base": ("acestep-v15-base", "base", None),
}
SILENCE_FRAMES = 750
T4_GIB = 15.0  # what NVML reports for a 16 GB T4


@dataclass
class Models:
    components: Components
    paths: CheckpointPaths
    precision: PrecisionPlan
    device: torch.device


def dit_config(config: str) -> dict:
    _, variant, overrides = CONFIGS[config]
    return tiny_dit_config(variant) | copy.deepcopy(overrides or {}) | {"dtype": "bfloat16"}


def _real_modules(cfg: dict, device: torch.device) -> dict[str, torch.nn.Module]:
    configs = convert.component_configs(cfg)
    with torch.device(device):
        modules = {part: cls.from_config(configs[part]) for part, cls in DIT_CLASSES.items()}
        modules["text_encoder"] = Qwen3Model(Qwen3Config(**TEXT_ENCODER))
        modules["vae"] = AutoencoderOobleck(**VAE)
        # Upstream's silence latent is finite and small; random values of that scale cost the same.
        silence = 0.1 * torch.randn(1, SILENCE_FRAMES, VAE["decoder_input_channels"])
    modules["condition_encoder"].register_buffer("silence_latent", silence, persistent=True)
    return modules


def _tiny_modules(variant: str, seed: int, device: torch.device) -> dict[str, torch.nn.Module]:
    modules = _build_components(variant, seed)["modules"]
    for module in modules.values():
        torch.nn.Module.to(module, device=device)
    return modules


def build(config: str, device: torch.device, precision: PrecisionPlan, seed: int = 0) -> Models:
    """Every network of ``config`` with random weights on ``device``, stored as ``precision`` says."""
    torch.manual_seed(seed)
    name, variant, overrides = CONFIGS[config]
    cfg = dit_config(config)
    modules = _real_modules(cfg, device) if overrides else _tiny_modules(variant, seed, device)
    for module in modules.values():
        module.eval().requires_grad_(False)
    apply_plan(modules, precision)  # the engine applies the plan's RoPE mode when it is built
    components = Components(tokenizer=_tiny_tokenizer(), **modules)
    folder = Path("/nonexistent/checkpoints")  # nothing is read from disk
    paths = CheckpointPaths(
        layout="upstream",
        root=folder,
        dit_name=name,
        variant=detect_variant(cfg, name),
        dit_config=cfg,
        dit_dir=folder / name,
        vae_dir=folder / "vae",
        text_encoder_dir=folder / "Qwen3-Embedding-0.6B",
        tokenizer_dir=folder / "Qwen3-Embedding-0.6B",
    )
    assert paths.variant.name == variant
    return Models(components, paths, precision, device)


def engine(models: Models, fast: str = "off", t4: bool = False) -> AceStep:
    """acestep's engine on ``models``: everything resident (the 4090/H100 plan), no limits; or,
    with ``t4``, the T4 tier's plan (16 GB cap, one component on the GPU at a time)."""
    plan = resident_plan(str(models.device))
    if t4 and models.device.type == "cuda":
        limits = Limits.for_gpu(T4_GIB)
        apply_vram_cap(models.device, T4_GIB)
        plan = plan_for(limits, "cuda")
    return AceStep(
        models.components,
        models.paths,
        models.device,
        models.precision.torch_dtype,
        plan=plan,
        fast=fast,
        precision=models.precision,
    )


def stock_pipeline(models: Models) -> AceStepPipeline:
    """diffusers' own pipeline on the same modules, as its documentation builds it."""
    parts = models.components
    return AceStepPipeline(
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        transformer=parts.transformer,
        condition_encoder=parts.condition_encoder,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0),
        audio_tokenizer=parts.audio_tokenizer,
        audio_token_detokenizer=parts.audio_token_detokenizer,
    )


def parameter_count(models: Models) -> dict[str, int]:
    return {
        name: sum(p.numel() for p in module.parameters())
        for name, module in models.components.modules().items()
    }
