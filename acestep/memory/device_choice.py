"""Which device a process runs the models on: one rule for the server and for the worker.

The server reads its GPU facts without torch (``acestep/memory/gpus.py``: NVML or a probe
subprocess); a worker or an in-process engine reads them from torch (``acestep/memory/devices.py``).
Both pass those facts and the settings ``ACESTEP_DEVICE`` and ``ACESTEP_GPU_DEVICE`` to
:func:`choose_device`, so the same facts and settings give the same device. The rule is written
out in docs/memory.md ("Device").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from acestep.memory.gpus import GpuInfo, select_gpu

DEVICE_KINDS = ("auto", "cuda", "mps", "cpu")
NO_GPU = ("cpu", "none", "-1")  # ACESTEP_GPU_DEVICE values that mean "no GPU"

GpuFacts = Sequence[GpuInfo] | Callable[[], Sequence[GpuInfo]]


class DeviceChoiceError(ValueError):
    """The settings ask for a device these facts do not have, or are not a device at all."""


@dataclass(frozen=True)
class DeviceChoice:
    """``kind`` is ``cuda``, ``mps`` or ``cpu``; ``gpu`` the chosen GPU when ``kind`` is ``cuda``."""

    kind: str
    gpu: GpuInfo | None = None

    @property
    def torch_name(self) -> str:
        """``cuda:N`` with the GPU's torch ordinal when the facts know it, else the kind."""
        if self.gpu is not None and self.gpu.ordinal is not None:
            return f"cuda:{self.gpu.ordinal}"
        return self.kind


def parse_device_setting(setting: str | None) -> tuple[str, str | None]:
    """``ACESTEP_DEVICE`` as (kind, GPU index or None): ``cuda:1`` -> (``cuda``, ``1``)."""
    kind, _, index = (setting or "auto").strip().lower().partition(":")
    kind = kind or "auto"
    if kind not in DEVICE_KINDS or (index and (kind != "cuda" or not index.isdigit())):
        raise DeviceChoiceError(f"ACESTEP_DEVICE must be auto, cuda, cuda:N, mps or cpu, got {setting!r}")
    return kind, index or None


def wants_gpu_facts(device: str | None, gpu: str | None = None) -> bool:
    """Whether :func:`choose_device` will look at the GPUs (reading them may start a probe
    subprocess or a CUDA context, so a CPU-only process skips it)."""
    kind, index = parse_device_setting(device)
    if kind in ("cpu", "mps"):
        return False
    return index is not None or (gpu or "auto").strip().lower() not in NO_GPU


def choose_device(
    gpus: GpuFacts, device: str | None = None, gpu: str | None = None, mps: bool = False
) -> DeviceChoice:
    """The device for these GPU facts, ``device`` (``ACESTEP_DEVICE``) and ``gpu``
    (``ACESTEP_GPU_DEVICE``); ``mps`` says whether Apple's MPS is there.

    - ``cpu`` and ``mps`` mean that device (``mps`` must be available).
    - ``cuda:N`` means GPU N; otherwise ``ACESTEP_GPU_DEVICE`` picks: ``N`` = GPU N, ``auto`` (or
      unset) = the GPU with the least memory in use, ``cpu``/``none``/``-1`` = no GPU.
    - ``cuda`` with no GPU (or with ``ACESTEP_GPU_DEVICE=cpu``) is an error, not a quiet fallback:
      a server set up for a GPU must not run on the CPU unnoticed.
    - ``auto`` takes a GPU when there is one, then MPS, then the CPU.
    """
    kind, index = parse_device_setting(device)
    if kind == "cpu":
        return DeviceChoice("cpu")
    if kind == "mps":
        if not mps:
            raise DeviceChoiceError("ACESTEP_DEVICE=mps was asked for, but this process has no MPS")
        return DeviceChoice("mps")
    facts = list(gpus() if callable(gpus) else gpus)
    if kind == "cuda" and not facts:
        raise DeviceChoiceError(f"device {device!r} was asked for, but CUDA is not available")
    # An index in ACESTEP_DEVICE names the GPU outright (what an in-process engine is handed).
    chosen = select_gpu(facts, index or gpu)
    if chosen is not None:
        return DeviceChoice("cuda", chosen)
    if kind == "cuda":
        raise DeviceChoiceError(f"ACESTEP_DEVICE={device} asks for a GPU, ACESTEP_GPU_DEVICE={gpu} for none")
    if mps and (gpu or "auto").strip().lower() not in NO_GPU:
        return DeviceChoice("mps")
    return DeviceChoice("cpu")
