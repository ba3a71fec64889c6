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
from acestep.checkpoints.component_bytes import DIT_2B, DIT_XL, TEXT_ENCODER, VAE
from acestep.checkpoints.loading import DIT_CLASSES
from acestep.engine.quantize import quantize_components
from acestep.memory.devices import apply_vram_cap
from acestep.memory.fit import fit_plan
from acestep.memory.limits import Limits
from acestep.memory.mixed import apply_plan
from acestep.memory.precision import PrecisionPlan
from acestep.memory.quantization import QuantizationPlan
from acestep.memory.residency import resident_plan
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
    quantization: QuantizationPlan
    quantized_linears: dict[str, int]  # per component, what quantize_components did


def _place(module: torch.nn.Module, device: torch.device) -> None:
    # nn.Module's own ``to``, as the engine's residency moves them (diffusers' override warns).
    torch.nn.Module.to(module, device=device)


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
        _place(module, device)
    return modules


def build(
    config: str,
    device: torch.device,
    precision: PrecisionPlan,
    seed: int = 0,
    quantization: QuantizationPlan | None = None,
) -> Models:
    """Every network of ``config`` with random weights, stored as ``precision`` says, on ``device``;
    quantized as ``quantization`` says, they stay on the CPU, where the engine quantizes too
    (:func:`on_device` or the engine's residency plan moves them)."""
    torch.manual_seed(seed)
    quantization = quantization or QuantizationPlan()
    name, variant, overrides = CONFIGS[config]
    cfg = dit_config(config)
    where = torch.device("cpu") if quantization.active else device
    modules = _real_modules(cfg, where) if overrides else _tiny_modules(variant, seed, where)
    for module in modules.values():
        module.eval().requires_grad_(False)
    apply_plan(modules, precision)  # the engine applies the plan's RoPE mode when it is built
    components = Components(tokenizer=_tiny_tokenizer(), **modules)
    quantized_linears = quantize_components(components, quantization)
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
    return Models(components, paths, precision, device, quantization, quantized_linears)


def on_device(models: Models) -> None:
    """Every network on the benchmark device (the stock pipeline keeps them all there)."""
    for module in models.components.modules().values():
        if module is not None:
            _place(module, models.device)


def engine(models: Models, fast: str = "off", cap_gib: float | None = None) -> AceStep:
    """acestep's engine on ``models``: everything resident (the 4090/H100 plan), no limits; or,
    with ``cap_gib``, an engine for a card of that size: its tier's limits and the residency plan
    that fits them (``fit_plan``, as ``AceStep.from_pretrained``), the allocator capped there on CUDA."""
    plan, limits = resident_plan(str(models.device)), None
    if cap_gib is not None:
        limits = Limits.for_gpu(cap_gib)
        apply_vram_cap(models.device, cap_gib)
        # Refuses (MemoryLimitError, reported as the run's error) a model that does not fit the card.
        limits, plan, _ = fit_plan(
            limits, str(models.device), models.paths.variant.is_xl, models.precision, models.quantization
        )
    return AceStep(
        models.components,
        models.paths,
        models.device,
        models.precision.torch_dtype,
        plan=plan,
        limits=limits,
        fast=fast,
        precision=models.precision,
        quantization=models.quantization,
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
