"""The memory settings as command-line flags, and the ``MemoryManager`` they configure.

Each flag overrides its ``ACESTEP_*`` variable for this run only: the values go into a copy of the
environment that the manager reads, never into ``os.environ``.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from acestep.settings import FALSE_WORDS, TRUE_WORDS
from acestep.settings import current as current_settings
from acestep.settings import device as settings_device

MEMORY_FLAGS = {
    "offload_to_cpu": "ACESTEP_OFFLOAD_TO_CPU",
    "offload_dit_to_cpu": "ACESTEP_OFFLOAD_DIT_TO_CPU",
    "gpu_device": "ACESTEP_GPU_DEVICE",
    "max_cuda_vram": "MAX_CUDA_VRAM",
    "max_duration": "ACESTEP_MAX_DURATION",
    "max_batch_size": "ACESTEP_MAX_BATCH_SIZE",
    "quantization": "ACESTEP_QUANTIZE",
}
# Kept apart from MEMORY_FLAGS: acestep-api has its own --init-llm (a plain switch, accepted for
# upstream compatibility), and its False default must not override ACESTEP_INIT_LLM.
LM_SWITCH_FLAGS = {"init_llm": "ACESTEP_INIT_LLM"}
# Flags may go on a parser or on one of its argument groups (both have add_argument).
FlagTarget = argparse.ArgumentParser | argparse._ArgumentGroup
# The words a bool-ish flag takes (settings.parse_bool_setting's); auto keeps the default.
BOOL_CHOICES = ("true", "false", "auto", *sorted(TRUE_WORDS - {"true"}), *sorted(FALSE_WORDS - {"false"}))


def bool_word(value: str) -> str:
    """A bool-ish flag's word, compared without case (upstream writes True and False)."""
    return value.strip().lower()


def _bool_flag(p: FlagTarget, name: str, help_text: str) -> None:
    # A bare flag means true; the word is passed on as the setting's value, which reads it.
    p.add_argument(
        name,
        nargs="?",
        const="true",
        default=None,
        type=bool_word,
        choices=BOOL_CHOICES,
        metavar="BOOL",
        help=f"{help_text}; a bare flag means true (%(metavar)s: %(choices)s)",
    )


def device_flags(p: argparse.ArgumentParser) -> None:
    """``--device`` and ``--dtype``: where a command computes, and in what precision."""
    from acestep.memory.precision import DTYPES  # imports torch: only when a parser is built

    p.add_argument("--device", default=settings_device(), help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument(
        "--dtype",
        default=None,
        type=str.lower,
        choices=("auto", *DTYPES),
        metavar="DTYPE",
        help="precision (default: ACESTEP_DTYPE, else auto: bf16 or fp16-mixed on GPUs, float32 on CPU): "
        "%(choices)s",
    )


def _memory_flags(p: argparse.ArgumentParser) -> None:
    """The memory settings as flags (each overrides its ACESTEP_* variable for this run)."""
    _bool_flag(p, "--offload-to-cpu", "keep the text encoder and VAE in CPU RAM between uses")
    _bool_flag(p, "--offload-dit-to-cpu", "also the DiT (only with --offload-to-cpu)")
    p.add_argument("--gpu-device", default=None, help="auto (least memory in use), or a GPU index")
    p.add_argument("--max-cuda-vram", default=None, help="behave as a GPU of this many GiB (a real cap)")
    p.add_argument("--max-duration", default=None, help="override the tier's maximum seconds")
    p.add_argument("--max-batch-size", default=None, help="override the tier's maximum batch")
    p.add_argument(
        "--quantization",
        "--quantize",
        default=None,
        help="weight quantization (ACESTEP_QUANTIZE): auto, none, int8, fp8, w8a8, upstream's names, "
        "or per component: dit=int8,lm=int8",
    )


def _lm_switch_flag(p: FlagTarget) -> None:
    """``--init-llm``: allow the 5Hz LM where the tier leaves it off (the cpu tier does)."""
    _bool_flag(p, "--init-llm", "allow the 5Hz LM on this run (ACESTEP_INIT_LLM; off by default on CPU)")


def _memory_env(args: argparse.Namespace, flags: Mapping[str, str] = MEMORY_FLAGS) -> dict[str, str]:
    """This process's environment with the flags in ``flags`` (attribute -> variable) applied."""
    env = dict(current_settings())
    for attr, variable in flags.items():
        value = getattr(args, attr, None)
        if value is not None:
            env[variable] = str(value)
    device = (getattr(args, "device", None) or "auto").strip().lower()
    if device != "auto":
        kind, _, index = device.partition(":")
        env["ACESTEP_DEVICE"] = kind
        if index:
            env["ACESTEP_GPU_DEVICE"] = index
    return env


def _memory_manager(args: argparse.Namespace, flags: Mapping[str, str] = MEMORY_FLAGS):
    """A manager for this process (which runs the models itself, so torch may read the GPUs)."""
    from acestep.memory.devices import LocalTorchSource
    from acestep.memory.manager import MemoryManager

    return MemoryManager(source=LocalTorchSource(), env=_memory_env(args, flags))
