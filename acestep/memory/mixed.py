"""Carrying out a :class:`~acestep.memory.precision.PrecisionPlan` on loaded networks.

- :func:`cast_module` stores a network in the plan's dtype, except its float32 parts, which are
  cast once from the checkpoint's own dtype (never through fp16, which would already have
  overflowed or flushed what float32 is meant to keep).
- :func:`add_float32_islands` makes those parts callable from a float16 model: floating inputs
  are cast to float32 on the way in and outputs back to the model dtype on the way out (the
  lyric encoder ends in an RMSNorm, so what goes back is bounded).
- :func:`use_rope_mode` selects how rotary tables are built, process-wide (diffusers' modules
  look the builder up as a module global).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
from diffusers.models.transformers import ace_step_transformer
from diffusers.pipelines.ace_step import modeling_ace_step

from acestep.memory.precision import ROPE_MODES, PrecisionPlan

_DIFFUSERS_ROTARY = ace_step_transformer._ace_step_rotary_freqs
_ISLAND_HOOKS = "_acestep_float32_island"


def parts_of(component: str, plan: PrecisionPlan) -> list[str]:
    """The submodule paths of ``component`` that ``plan`` keeps in float32."""
    prefix = component + "."
    return [part.removeprefix(prefix) for part in plan.float32_parts if part.startswith(prefix)]


def cast_module(module: torch.nn.Module, dtype: torch.dtype, float32_parts: Iterable[str] = ()) -> None:
    """Cast ``module``'s floating tensors to ``dtype``, and those under ``float32_parts`` to float32."""
    parts = [module.get_submodule(path) for path in float32_parts]
    keep = {id(tensor) for part in parts for tensor in itertools.chain(part.parameters(), part.buffers())}

    def convert(tensor: torch.Tensor) -> torch.Tensor:
        if not tensor.is_floating_point():
            return tensor
        return tensor.to(torch.float32 if id(tensor) in keep else dtype)

    module._apply(convert)


def _cast_tree(value, dtype: torch.dtype):
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
    if isinstance(value, tuple):
        return tuple(_cast_tree(item, dtype) for item in value)
    if isinstance(value, list):
        return [_cast_tree(item, dtype) for item in value]
    if isinstance(value, dict):
        return {key: _cast_tree(item, dtype) for key, item in value.items()}
    return value


def add_float32_islands(module: torch.nn.Module, float32_parts: Iterable[str], dtype: torch.dtype) -> None:
    """Hooks on each float32 part: inputs to float32, outputs to ``dtype``. Idempotent."""
    for path in float32_parts:
        part = module.get_submodule(path)
        if getattr(part, _ISLAND_HOOKS, False):
            continue
        part.register_forward_pre_hook(
            lambda _m, args, kwargs: (_cast_tree(args, torch.float32), _cast_tree(kwargs, torch.float32)),
            with_kwargs=True,
        )
        part.register_forward_hook(lambda _m, _args, output: _cast_tree(output, dtype))
        setattr(part, _ISLAND_HOOKS, True)


def apply_plan(modules: dict[str, torch.nn.Module], plan: PrecisionPlan) -> None:
    """Cast every module by ``plan`` (on the device it is on) and hook its float32 parts."""
    for name, module in modules.items():
        parts = parts_of(name, plan)
        cast_module(module, plan.torch_dtype, parts)
        add_float32_islands(module, parts, plan.torch_dtype)


def upstream_rotary_freqs(
    seq_len: int, head_dim: int, theta: float, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary (cos, sin) as upstream's bf16 models build them: the inverse frequencies are a
    buffer that the model cast rounds to its dtype; positions and angles are then float32."""
    exponents = torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim
    inv_freq = (1.0 / theta**exponents).to(dtype).float()
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def use_rope_mode(mode: str) -> None:
    """``fp32``: diffusers' float32 tables (default); ``upstream``: :func:`upstream_rotary_freqs`.

    Process-wide: the DiT and the condition encoder look the builder up at call time.
    """
    if mode not in ROPE_MODES:
        raise ValueError(f"RoPE mode must be one of {', '.join(ROPE_MODES)}, got {mode!r}")
    builder = upstream_rotary_freqs if mode == "upstream" else _DIFFUSERS_ROTARY
    ace_step_transformer._ace_step_rotary_freqs = builder
    modeling_ace_step._ace_step_rotary_freqs = builder
