"""Precision and attention policy: which dtype the models run in and which attention kernel they use.

Settings: ``ACESTEP_DTYPE`` (``auto`` | float32 | bfloat16 | float16 | fp16-mixed, with short
forms), ``ACESTEP_ATTENTION`` (``sdpa`` | sdpa-efficient | sdpa-math | sdpa-flash | flash | sage)
and ``ACESTEP_ROPE`` (``fp32`` | ``upstream``). A server checks them before it starts
(:func:`validate_settings`), so a typo is a start-up error, not a failed first job.

The policy per GPU (:func:`planned_dtype`): bf16 from compute capability 8.0; below it (T4,
Turing, Volta) ``fp16-mixed``: fp16 weights for the DiT, VAE and text encoder, with the lyric
encoder kept in float32, because that is where fp16 overflows into NaN latents whenever lyrics
are present (upstream #1243, #1274, #924). See :class:`PrecisionPlan`.

The 5 Hz LM has its own entry in the plan (:func:`planned_lm_dtype`): bf16 where the GPU has it,
float32 everywhere else (docs/memory.md, "Precision").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loguru import logger

from acestep.settings import current as current_settings
from acestep.settings import value as setting_value

if TYPE_CHECKING:
    import torch

# Setting values -> torch dtype names. Plain strings: the server checks settings without torch.
DTYPES = {
    "fp16-mixed": "fp16-mixed",
    "float16-mixed": "fp16-mixed",
    "mixed": "fp16-mixed",
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


# Where fp16 overflows: the lyric encoder (8 layers over up to 2,048 lyric tokens) is the part that
# turns lyrics into NaN latents on pre-Ampere GPUs, while captions alone work (upstream #1243).
# Kept in float32 under fp16-mixed; it runs once per job, so its cost is small.
FLOAT32_PARTS = ("condition_encoder.lyric_encoder",)
ROPE_MODES = ("fp32", "upstream")
FAST_MODES = ("off", "compile", "graphs")  # the DiT path, see engine/fast_dit.py


@dataclass(frozen=True)
class PrecisionPlan:
    """How the networks are stored and computed.

    ``dtype`` is what the DiT, VAE, text encoder and latents use; ``float32_parts`` are
    ``component.submodule`` paths kept in float32 (inputs cast in, outputs cast back);
    ``rope`` is ``fp32`` (rotary tables from float32 frequencies, diffusers' behaviour) or
    ``upstream`` (frequencies rounded to ``dtype`` first, as upstream's bf16 models do);
    ``lm`` is the 5 Hz LM's dtype (:func:`planned_lm_dtype`).
    """

    name: str
    dtype: str
    float32_parts: tuple[str, ...] = ()
    rope: str = "fp32"
    lm: str = "float32"

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.dtype)

    @property
    def lm_torch_dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.lm)

    @classmethod
    def uniform(cls, dtype: str | torch.dtype, rope: str = "fp32") -> PrecisionPlan:
        """Everything in one dtype (a torch dtype or its name), the LM included, no float32 parts."""
        name = str(dtype).removeprefix("torch.")
        return cls(name, name, (), rope, name)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "float32_parts": list(self.float32_parts),
            "rope": self.rope,
            "lm": self.lm,
        }


def plan_named(name: str, rope: str = "fp32", lm: str | None = None) -> PrecisionPlan:
    """The plan for a policy name (``planned_dtype``'s answer); ``lm`` defaults to the name's own
    LM dtype (float32 under fp16-mixed, see :func:`planned_lm_dtype`)."""
    lm = lm or _LM_UNDER.get(name, name)
    if name == "fp16-mixed":
        return PrecisionPlan(name, "float16", FLOAT32_PARTS, rope, lm)
    return PrecisionPlan(name, name, (), rope, lm)


def plan_for_device(
    device_type: str, capability: int | None = None, setting: str | None = None, rope: str = "fp32"
) -> PrecisionPlan:
    """The whole plan for a device's facts, torch-free: what the server reports and the engine loads."""
    name = planned_dtype(device_type, capability, setting)
    return plan_named(name, rope, planned_lm_dtype(device_type, capability, setting))


def precision_plan(
    device: torch.device, requested: str | torch.dtype | None = None, env: Mapping[str, str] | None = None
) -> PrecisionPlan:
    """``requested``, else ``ACESTEP_DTYPE``, else the per-GPU policy; ``ACESTEP_ROPE`` for RoPE."""
    env = current_settings() if env is None else env
    rope = rope_mode(env)
    if not isinstance(requested, str) and requested is not None:
        return PrecisionPlan.uniform(requested, rope)
    capability = _capability(device) if device.type == "cuda" else None
    plan = plan_for_device(device.type, capability, requested or env.get("ACESTEP_DTYPE"), rope)
    if plan.name == "float16" and capability is not None and capability < 8:
        logger.warning(
            "plain float16 on a GPU below compute capability 8.0 gives NaN audio whenever lyrics are "
            "present (upstream #1243); ACESTEP_DTYPE=auto uses fp16-mixed there"
        )
    return plan


def default_dtype(device: torch.device, requested: str | torch.dtype | None = None) -> torch.dtype:
    """The compute dtype of :func:`precision_plan` (float16 for fp16-mixed)."""
    return precision_plan(device, requested).torch_dtype


def planned_dtype(device_type: str, capability: int | None = None, setting: str | None = None) -> str:
    """The policy name for a device: the setting when not ``auto``, else bf16 on CUDA from compute
    capability 8.0, ``fp16-mixed`` below it, float32 on CPU, float16 on MPS.

    Pre-Ampere GPUs (T4, CC 7.5) have no bf16, and plain fp16 there turns any lyrics into NaN
    latents (upstream #1243); fp16-mixed keeps the lyric encoder in float32 and costs half the
    memory and a fraction of the time of full float32 (T4: 65 fp16 tensor TFLOPS, 8 fp32 TFLOPS).
    """
    name = (setting or "auto").strip().lower()
    if name != "auto":
        if name not in DTYPES:
            choices = ", ".join(DTYPES)
            raise ValueError(f"dtype (ACESTEP_DTYPE) must be auto or one of {choices}, got {name!r}")
        return DTYPES[name]
    if device_type == "cuda":
        return "bfloat16" if (capability or 0) >= 8 else "fp16-mixed"
    if device_type == "mps":
        return "float16"
    return "float32"


# The LM's dtype under a DiT policy name that is not one dtype for every network.
_LM_UNDER = {"fp16-mixed": "float32"}


def planned_lm_dtype(device_type: str, capability: int | None = None, setting: str | None = None) -> str:
    """The 5 Hz LM's dtype: the setting when it names one dtype, else bf16 on CUDA from compute
    capability 8.0 and float32 everywhere else (pre-Ampere GPUs, MPS, CPU).

    Not float16 below 8.0 (T4): the LM is a Qwen3 decoder trained in bf16, and Qwen models in fp16
    overflow their activations into NaN (QwenLM/Qwen3 issues #826, #868). An overflowed LM does
    not fail, it writes wrong codes and metadata, so no check catches it the way
    ``check_latents`` catches the DiT's NaN. float32 costs twice the LM's memory (1.7B: about
    6.8 GB), and on tier 5 cards the LM idles in CPU RAM anyway (acestep/memory/residency.py).
    ``fp16-mixed`` keeps the LM in float32 for the same reason; an explicit ``float16`` is obeyed.
    """
    name = planned_dtype(device_type, capability, setting)
    if (setting or "auto").strip().lower() != "auto":
        return _LM_UNDER.get(name, name)
    if device_type == "cuda" and (capability or 0) >= 8:
        return "bfloat16"
    return "float32"


def rope_mode(env: Mapping[str, str] | None = None) -> str:
    """``ACESTEP_ROPE``: ``fp32`` (default) or ``upstream`` (bf16-rounded frequencies, opt-in)."""
    env = current_settings() if env is None else env
    name = setting_value(env, "ACESTEP_ROPE").lower()
    if name not in ROPE_MODES:
        raise ValueError(f"ACESTEP_ROPE must be one of {', '.join(ROPE_MODES)}, got {name!r}")
    return name


def attention_backend(env: Mapping[str, str] | None = None) -> str:
    """Our name for the attention kernel in force (``ACESTEP_ATTENTION``, default ``sdpa``)."""
    env = current_settings() if env is None else env
    name = setting_value(env, "ACESTEP_ATTENTION").lower()
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


def fast_mode(env: Mapping[str, str] | None = None) -> str:
    """``ACESTEP_DIT_FAST``: ``off`` (default), ``compile`` or ``graphs``."""
    env = current_settings() if env is None else env
    mode = setting_value(env, "ACESTEP_DIT_FAST").lower()
    if mode in ("0", "false", "no", "eager"):
        mode = "off"
    if mode not in FAST_MODES:
        raise ValueError(f"ACESTEP_DIT_FAST must be one of {', '.join(FAST_MODES)}, got {mode!r}")
    return mode


def validate_settings(env: Mapping[str, str]) -> None:
    """ValueError naming the first bad one of ``ACESTEP_DTYPE``, ``_ATTENTION``, ``_ROPE``, ``_DIT_FAST``."""
    planned_dtype("cpu", None, env.get("ACESTEP_DTYPE"))
    attention_backend(env)
    rope_mode(env)
    fast_mode(env)


def _capability(device: torch.device) -> int:
    import torch

    major, _ = torch.cuda.get_device_capability(device)
    return major
