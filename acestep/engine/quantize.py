"""Applying a quantization plan (``acestep/memory/quantization.py``) to loaded networks with torchao.

Done on the CPU, right after the weights are loaded and cast by the precision plan and before the
residency plan moves anything to the GPU: torchao's ``quantize_`` swaps each ``nn.Linear``'s
weight for a quantized tensor subclass, whose scales follow the float dtype the weight had, and a
later ``Module.to(dtype)`` would not re-cast it. Only linear layers are quantized (torchao's
default filter); embeddings, norms and convolutions keep the precision plan's dtype.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import importlib.util
import time
from collections.abc import Callable
from pathlib import Path

import torch
from loguru import logger

from acestep.checkpoints import CheckpointPaths
from acestep.engine.quant_cache import cache_folder, entry_for, source_folders
from acestep.memory.quantization import (
    COMPONENTS,
    FP8,
    INSTALL_HINT,
    INT8,
    NONE,
    W8A8,
    QuantizationError,
    QuantizationPlan,
)

# The LM's output head shares its weight with the token embedding (Qwen3 ties them); quantizing
# it would untie the pair and keep both copies, so it stays in the precision plan's dtype.
LM_KEPT = ("lm_head",)


def torchao_problem() -> str | None:
    """Why torchao cannot be used with this torch (None: it can). A torchao release is built for
    one torch line: 0.18 does not import with torch 2.9 (the images pin 0.15.0 for their 2.9.1)."""
    if importlib.util.find_spec("torchao") is None:
        return f"torchao is not installed: {INSTALL_HINT}"
    try:
        import torchao.quantization  # noqa: F401
    except Exception as exc:  # an ImportError, or a torch API the release expects and lacks
        version = importlib.metadata.version("torchao")
        return (
            f"torchao {version} does not import with torch {torch.__version__} ({exc}); install the "
            "torchao release built for this torch"
        )
    return None


def usable_plan(plan: QuantizationPlan) -> QuantizationPlan:
    """``plan`` where torchao can run it: a mode the policy chose by default (``auto``) falls back to
    none with a warning, since a default never stops a load; a mode asked for is an error."""
    wanted = [c for c in COMPONENTS if plan.mode(c) != NONE]
    problem = torchao_problem() if wanted else None
    if problem is None:
        return plan
    origin = dict(plan.origin)
    asked = [c for c in wanted if not origin.get(c, "").startswith("auto")]
    if asked:
        raise QuantizationError(f"{', '.join(f'{c}={plan.mode(c)}' for c in asked)} refused: {problem}")
    logger.warning(f"quantization off ({', '.join(wanted)} would be {INT8} by default): {problem}")
    notes = {c: f"{origin.get(c, 'auto')}; skipped: {problem}" for c in wanted}
    return dataclasses.replace(plan, **dict.fromkeys(wanted, NONE), origin=tuple((origin | notes).items()))


def torchao_config(mode: str):
    """torchao's config object for ``mode``; a clear error when torchao cannot be used."""
    problem = torchao_problem()
    if problem is not None:
        raise QuantizationError(f"quantization mode {mode}: {problem}")
    from torchao.quantization import (
        Float8WeightOnlyConfig,
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        MappingType,
    )

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


def quantize_module(
    module: torch.nn.Module,
    mode: str,
    kept: tuple[str, ...] = (),
    cache: Path | None = None,
    source: Path | None = None,
    component: str = "",
) -> int:
    """Quantize ``module``'s linear layers in place (except those named in ``kept``, as full
    dotted names or prefixes); returns how many were quantized (0 for ``none``).

    With a ``cache`` folder (``acestep/engine/quant_cache.py``) and the ``source`` folder the
    weights were read from, an entry of the same key is read instead of quantizing, and a miss
    writes one: the same tensors, bit for bit."""
    if mode == NONE:
        return 0
    from torchao.quantization import quantize_

    config = torchao_config(mode)
    wanted = _linear_filter(kept)
    linears = [name for name, child in module.named_modules() if wanted(child, name)]
    entry = None
    if cache is not None and source is not None:
        dtypes = {str(module.get_submodule(name).weight.dtype).removeprefix("torch.") for name in linears}
        entry = entry_for(cache, source, component, mode, "+".join(sorted(dtypes)), config)
    if entry is not None and entry.restore(module, linears):
        logger.info(f"read the {component}'s {mode} weights from the quantized cache: {entry.path}")
        return len(linears)
    quantize_(module, config, filter_fn=wanted)
    logger.info(f"quantized {len(linears)} linear layers of the {component or 'network'} to {mode}")
    if entry is not None:
        entry.store(module, linears)
    return len(linears)


def quantize_components(components, plan, paths: CheckpointPaths | None = None) -> dict[str, int]:
    """The DiT (``transformer``) and the text encoder as ``plan`` says; linear layers quantized,
    by component. The condition encoder (with the lyric encoder that fp16-mixed keeps in float32)
    is not quantized. With ``paths`` (the checkpoint the components came from), the quantized
    cache of ``ACESTEP_QUANTIZE_CACHE`` is used."""
    done: dict[str, int] = {}
    targets = {"dit": components.transformer, "text_encoder": components.text_encoder}
    cache = cache_folder() if paths is not None else None
    sources = source_folders(paths) if cache is not None else {}
    for component, module in targets.items():
        mode = plan.mode(component)
        if mode == NONE or module is None:
            continue
        started = time.perf_counter()
        done[component] = quantize_module(module, mode, (), cache, sources.get(component), component)
        logger.info(
            f"the {component}'s {done[component]} linear layers are {mode} "
            f"({time.perf_counter() - started:.2f} s)"
        )
    return done


def cuda_capability(device: torch.device) -> tuple[int, int] | None:
    """(major, minor) of a CUDA device, what the quantization policy checks; None elsewhere."""
    return tuple(torch.cuda.get_device_capability(device)) if device.type == "cuda" else None


def weight_bytes(module: torch.nn.Module) -> int:
    """The bytes ``module``'s parameters and buffers hold, quantized tensors at their packed size."""
    tensors = (*module.parameters(), *module.buffers())
    return sum(inner.numel() * inner.element_size() for tensor in tensors for inner in inner_tensors(tensor))


def is_quantized(tensor: torch.Tensor) -> bool:
    """A torchao-quantized weight, whichever layout the installed release uses (``Int8Tensor``,
    ``Float8Tensor``, or 0.15's ``AffineQuantizedTensor`` and ``LinearActivationQuantizedTensor``)."""
    return hasattr(tensor, "__tensor_flatten__")


def inner_tensors(tensor: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors a torchao weight stores (int8 or float8 data, scales), however nested."""
    if hasattr(tensor, "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()
        return [inner for name in names for inner in inner_tensors(getattr(tensor, name))]
    return [tensor]


@functools.cache
def int8_layout() -> str:
    """The class torchao stores an int8 weight in: ``Int8Tensor`` (0.16 and later; what the byte
    counts and the quantized cache expect) or ``AffineQuantizedTensor`` (0.15, the images' torch 2.9)."""
    layer = torch.nn.Linear(8, 8)
    quantize_module(layer, INT8)
    return type(layer.weight).__name__
