"""Applying a quantization plan (``acestep/memory/quantization.py``) to loaded networks with torchao.

Done on the CPU, right after the weights are loaded and cast by the precision plan and before the
residency plan moves anything to the GPU: torchao's ``quantize_`` swaps each ``nn.Linear``'s
weight for a quantized tensor subclass, whose scales follow the float dtype the weight had, and a
later ``Module.to(dtype)`` would not re-cast it. Only linear layers are quantized (torchao's
default filter); embeddings, norms and convolutions keep the precision plan's dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from loguru import logger

from acestep.memory.quantization import FP8, INSTALL_HINT, INT8, NONE, W8A8, QuantizationError

# The LM's output head shares its weight with the token embedding (Qwen3 ties them); quantizing
# it would untie the pair and keep both copies, so it stays in the precision plan's dtype.
LM_KEPT = ("lm_head",)


def torchao_config(mode: str):
    """torchao's config object for ``mode``; a clear error naming the extra when torchao is absent."""
    try:
        from torchao.quantization import (
            Float8WeightOnlyConfig,
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            MappingType,
        )
    except ImportError as exc:
        raise QuantizationError(
            f"quantization mode {mode} needs torchao, which is not installed: {INSTALL_HINT}"
        ) from exc
    if mode == INT8:
        return Int8WeightOnlyConfig()
    if mode == FP8:
        return Float8WeightOnlyConfig()
    if mode == W8A8:  # upstream's w8a8_dynamic: asymmetric per-token activations
        return Int8DynamicActivationInt8WeightConfig(act_mapping_type=MappingType.ASYMMETRIC)
    raise QuantizationError(f"no torchao config for quantization mode {mode!r}")


def _linear_filter(kept: tuple[str, ...]) -> Callable[[torch.nn.Module, str], bool]:
    def wanted(module: torch.nn.Module, name: str) -> bool:
        return isinstance(module, torch.nn.Linear) and not any(
            name == k or name.startswith(f"{k}.") or name.endswith(f".{k}") for k in kept
        )

    return wanted


def quantize_module(module: torch.nn.Module, mode: str, kept: tuple[str, ...] = ()) -> int:
    """Quantize ``module``'s linear layers in place (except those named in ``kept``, as full
    dotted names or prefixes); returns how many were quantized (0 for ``none``)."""
    if mode == NONE:
        return 0
    from torchao.quantization import quantize_

    config = torchao_config(mode)
    wanted = _linear_filter(kept)
    count = sum(1 for name, child in module.named_modules() if wanted(child, name))
    quantize_(module, config, filter_fn=wanted)
    return count


def quantize_components(components, plan) -> dict[str, int]:
    """The DiT (``transformer``) and the text encoder as ``plan`` says; linear layers quantized,
    by component. The condition encoder (with the lyric encoder that fp16-mixed keeps in float32)
    is not quantized."""
    done: dict[str, int] = {}
    targets = {"dit": components.transformer, "text_encoder": components.text_encoder}
    for component, module in targets.items():
        mode = plan.mode(component)
        if mode == NONE or module is None:
            continue
        done[component] = quantize_module(module, mode)
        logger.info(f"quantized {done[component]} linear layers of the {component} to {mode}")
    return done


def cuda_capability(device: torch.device) -> tuple[int, int] | None:
    """(major, minor) of a CUDA device, what the quantization policy checks; None elsewhere."""
    return tuple(torch.cuda.get_device_capability(device)) if device.type == "cuda" else None


def weight_bytes(module: torch.nn.Module) -> int:
    """The bytes ``module``'s parameters and buffers hold, quantized tensors at their packed size."""
    total = 0
    for tensor in (*module.parameters(), *module.buffers()):
        inner = getattr(tensor, "__tensor_flatten__", None)
        if inner is not None:
            names, _ = tensor.__tensor_flatten__()
            total += sum(getattr(tensor, n).numel() * getattr(tensor, n).element_size() for n in names)
        else:
            total += tensor.numel() * tensor.element_size()
    return total
