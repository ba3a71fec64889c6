"""Precision and attention policy: which dtype the models run in and which attention kernel they use.

Settings: ``ACESTEP_DTYPE`` (``auto`` | float32 | bfloat16 | float16, with short forms) and
``ACESTEP_ATTENTION`` (``sdpa`` | sdpa-efficient | sdpa-math | sdpa-flash | flash | sage).
A server checks both before it starts (:func:`validate_settings`), so a typo is a start-up error,
not a failed first job.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from loguru import logger

if TYPE_CHECKING:
    import torch

# Setting values -> torch dtype names. Plain strings: the server checks settings without torch.
DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}

# Our names -> diffusers' attention dispatcher backends. Only kernels that are installed locally:
# diffusers' "*_hub" backends download code at run time, which acestep never does.
ATTENTION_BACKENDS = {
    "sdpa": "native",  # torch picks flash (sm80+), memory-efficient (T4) or math per call
    "sdpa-efficient": "_native_efficient",
    "sdpa-math": "_native_math",
    "sdpa-flash": "_native_flash",
    "flash": "flash",  # needs the flash-attn package (no wheels for arm64)
    "sage": "sage",  # needs the sageattention package
}
# Modules whose attention goes through diffusers' dispatcher.
ATTENTION_COMPONENTS = ("transformer", "condition_encoder")


def default_dtype(device: torch.device, requested: str | torch.dtype | None = None) -> torch.dtype:
    """``requested``, else ``ACESTEP_DTYPE``, else the policy of :func:`planned_dtype`."""
    import torch

    if isinstance(requested, torch.dtype):
        return requested
    capability = _capability(device) if device.type == "cuda" else None
    name = planned_dtype(device.type, capability, requested or os.environ.get("ACESTEP_DTYPE"))
    if name == "float16" and capability is not None and capability < 8:
        logger.warning(
            "float16 on a GPU below compute capability 8.0 gives NaN audio whenever lyrics are "
            "present (upstream #1243); ACESTEP_DTYPE=auto uses float32 there"
        )
    return getattr(torch, name)


def planned_dtype(device_type: str, capability: int | None = None, setting: str | None = None) -> str:
    """The dtype name for a device: the setting when not ``auto``, else bf16 on CUDA from compute
    capability 8.0, fp32 below it and on CPU, fp16 on MPS.

    Pre-Ampere GPUs (T4, CC 7.5) get fp32: fp16 there turns any lyrics into NaN latents
    (upstream issue #1243), and they have no bf16.
    """
    name = (setting or "auto").strip().lower()
    if name != "auto":
        if name not in DTYPES:
            choices = ", ".join(DTYPES)
            raise ValueError(f"dtype (ACESTEP_DTYPE) must be auto or one of {choices}, got {name!r}")
        return DTYPES[name]
    if device_type == "cuda":
        return "bfloat16" if (capability or 0) >= 8 else "float32"
    if device_type == "mps":
        return "float16"
    return "float32"


def attention_backend(env: Mapping[str, str] | None = None) -> str:
    """Our name for the attention kernel in force (``ACESTEP_ATTENTION``, default ``sdpa``)."""
    env = os.environ if env is None else env
    name = (env.get("ACESTEP_ATTENTION") or "sdpa").strip().lower()
    if name in ("auto", "native"):
        name = "sdpa"
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"ACESTEP_ATTENTION must be one of {', '.join(ATTENTION_BACKENDS)}, got {name!r}")
    return name


def apply_attention(components, name: str | None = None) -> str:
    """Route the DiT's and the condition encoder's attention through the chosen kernel.

    ``sdpa`` leaves diffusers' default in place. Others go through ``set_attention_backend``,
    which refuses a kernel whose package is not installed.
    """
    name = name or attention_backend()
    if name == "sdpa":
        return name
    for part in ATTENTION_COMPONENTS:
        module = getattr(components, part, None)
        if module is not None and hasattr(module, "set_attention_backend"):
            module.set_attention_backend(ATTENTION_BACKENDS[name])
    return name


def validate_settings(env: Mapping[str, str]) -> None:
    """ValueError naming the setting when ``ACESTEP_DTYPE`` or ``ACESTEP_ATTENTION`` is not valid."""
    planned_dtype("cpu", None, env.get("ACESTEP_DTYPE"))
    attention_backend(env)


def _capability(device: torch.device) -> int:
    import torch

    major, _ = torch.cuda.get_device_capability(device)
    return major
