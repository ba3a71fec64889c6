"""Random LoRA and LoKr adapters for the tiny checkpoints of :mod:`acestep.testing` (re-exported
there): real files in the formats the LoRA catalog reads, seeded, so tests need no download."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def _meta_transformer(variant: str) -> torch.nn.Module:
    """The tiny DiT of ``variant`` without weights: only its layers' shapes are needed."""
    from acestep.checkpoints import convert
    from acestep.checkpoints.loading import DIT_CLASSES
    from acestep.testing import tiny_dit_config

    config = convert.component_configs(tiny_dit_config(variant))["transformer"]
    with torch.device("meta"):
        return DIT_CLASSES["transformer"].from_config(config)


def make_tiny_lora(
    path: str | Path,
    layout: str = "diffusers",
    variant: str = "base",
    rank: int = 4,
    alpha: float | None = None,
    seed: int = 0,
    record_variant: bool = True,
) -> Path:
    """Write a random low-rank adapter for the tiny checkpoint's DiT and return its path.

    ``layout="diffusers"`` writes ``<path>.safetensors`` with diffusers' keys and LoRA metadata;
    ``layout="peft"`` writes upstream's folder (``adapter_config.json`` +
    ``adapter_model.safetensors``, keys ``base_model.model.layers.N...q_proj...``). The base variant is
    recorded (``acestep_base_variant`` in the header, and ``base_model_name_or_path`` for PEFT)
    unless ``record_variant`` is false; an ``xl-*`` variant adapts the XL-shaped tiny DiT.
    """
    from safetensors.torch import save_file

    from acestep.checkpoints import convert
    from acestep.lora.formats import upstream_kind

    if layout not in ("diffusers", "peft"):
        raise ValueError(f"layout must be 'diffusers' or 'peft', got {layout!r}")
    transformer = _meta_transformer(variant)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for module_name, module in sorted(transformer.named_modules()):
        if not isinstance(module, torch.nn.Linear) or not module_name.endswith(LORA_TARGETS):
            continue
        down = torch.randn(rank, module.in_features, generator=generator) / math.sqrt(module.in_features)
        up = 0.5 * torch.randn(module.out_features, rank, generator=generator) / math.sqrt(rank)
        if layout == "peft":
            upstream = convert.upstream_key("transformer", f"{module_name}.weight").removeprefix("decoder.")
            key = f"base_model.model.{upstream.removesuffix('.weight')}"
        else:
            key = f"transformer.{module_name}"
        tensors[f"{key}.lora_A.weight"] = down.contiguous()
        tensors[f"{key}.lora_B.weight"] = up.contiguous()
    alpha = float(rank if alpha is None else alpha)
    targets = [upstream_kind(t) for t in LORA_TARGETS] if layout == "peft" else list(LORA_TARGETS)
    lora_config = {"r": rank, "lora_alpha": alpha, "target_modules": targets}
    header = {"acestep_base_variant": variant} if record_variant else {}
    path = Path(path)
    if layout == "peft":
        path.mkdir(parents=True, exist_ok=True)
        base = f"checkpoints/acestep-v15-{variant}" if record_variant else "decoder"
        (path / "adapter_config.json").write_text(
            json.dumps(lora_config | {"peft_type": "LORA", "base_model_name_or_path": base}, indent=2)
        )
        save_file(tensors, str(path / "adapter_model.safetensors"), metadata=header)
        return path
    path = path.with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=header | {"lora_adapter_metadata": json.dumps(lora_config)})
    return path


def make_tiny_lokr(
    path: str | Path,
    variant: str = "base",
    dim: int = 4,
    alpha: float | None = None,
    factor: int = -1,
    seed: int = 0,
    record_variant: bool = True,
    targets: tuple[str, ...] | None = LORA_TARGETS,
    decompose_both: bool = False,
) -> Path:
    """Write a random LoKr (LyCORIS) for the tiny checkpoint's DiT with
    :func:`acestep.lora.formats.write_lokr` and return its folder (``<path>/lokr_weights.safetensors``).

    ``targets`` are diffusers' module kinds (the attention projections by default); None adapts
    every Linear and Conv1d of the DiT, as upstream's LoKr training does. Every factor is random
    and non-zero, so the adapter changes the DiT's output. Without ``record_variant`` the header
    does not say which DiT it was made for.
    """
    from lycoris.modules.lokr import LokrModule

    from acestep.lora.formats import write_lokr
    from acestep.lora.lokr import ADAPTABLE, lycoris_name, quiet_lycoris

    transformer = _meta_transformer(variant)
    generator = torch.Generator().manual_seed(seed)
    alpha = float(dim if alpha is None else alpha)
    state = {}
    for module_name, module in sorted(transformer.named_modules()):
        if not isinstance(module, ADAPTABLE) or (targets is not None and not module_name.endswith(targets)):
            continue
        with quiet_lycoris():  # it warns where a factor is small enough to be kept whole
            lokr = LokrModule(
                lycoris_name(module_name),
                module,
                1.0,
                dim,
                alpha,
                factor=factor,
                decompose_both=decompose_both,
            )
        with torch.no_grad():
            for name, param in sorted(lokr.named_parameters()):
                gain = 0.5 if name in ("lokr_w1", "lokr_w1_a") else 1.0  # deltas about half the weights'
                param.copy_(gain * torch.randn(param.shape, generator=generator) / math.sqrt(param.shape[-1]))
        state |= {f"{lokr.lora_name}.{key}": value for key, value in lokr.state_dict().items()}
    config = {"linear_dim": dim, "linear_alpha": alpha, "factor": factor, "decompose_both": decompose_both}
    folder = write_lokr(Path(path), state, config, variant)
    if not record_variant:  # rewritten without the variant, as a file from elsewhere may come
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        from acestep.lora.catalog import LOKR_WEIGHTS, VARIANT_KEY

        weights = str(folder / LOKR_WEIGHTS)
        with safe_open(weights, framework="pt") as handle:
            header = {k: v for k, v in (handle.metadata() or {}).items() if k != VARIANT_KEY}
        save_file(load_file(weights), weights, metadata=header)
    return folder


@torch.no_grad()
def dit_probe(transformer: torch.nn.Module, seed: int = 0, frames: int = 10) -> torch.Tensor:
    """The DiT's output for fixed random inputs (same seed, same inputs): compare it before and
    after an adapter is loaded, activated or removed."""
    config = transformer.config
    weight = next(transformer.parameters())
    generator = torch.Generator().manual_seed(seed)
    latent = config.audio_acoustic_hidden_dim
    width = config.encoder_hidden_size or config.hidden_size

    def noise(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(weight.device, weight.dtype)

    t = torch.full((1,), 0.5, device=weight.device, dtype=weight.dtype)
    return transformer(
        hidden_states=noise(1, frames, latent),
        timestep=t,
        timestep_r=t,
        encoder_hidden_states=noise(1, 6, width),
        context_latents=noise(1, frames, config.in_channels - latent),
        return_dict=False,
    )[0]
