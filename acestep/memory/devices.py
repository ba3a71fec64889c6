"""Which device to run on, and sizes that depend on the device's memory."""

from __future__ import annotations

import torch

from acestep.memory.device_choice import choose_device
from acestep.memory.fit import CONTEXT_RESERVE_GIB, decode_tile_frames, encode_tile_seconds
from acestep.memory.gpus import DeviceStatsSource, GpuInfo
from acestep.settings import current as current_settings
from acestep.settings import value as setting_value


def resolve_device(
    device: str | torch.device = "auto", source: DeviceStatsSource | None = None
) -> torch.device:
    """The device this process computes on: ``device``, else ``ACESTEP_DEVICE``, decided by
    :func:`acestep.memory.device_choice.choose_device` over torch's GPU facts (``source``; the
    server applies the same function to the facts it reads without torch)."""
    settings = current_settings()
    setting = str(device or "auto").strip().lower()
    if setting == "auto":
        setting = setting_value(settings, "ACESTEP_DEVICE")
    source = source or LocalTorchSource()
    facts: list[GpuInfo] = []

    def read() -> list[GpuInfo]:  # only when the settings need GPUs: reading makes CUDA contexts
        facts.extend(source.gpus())
        return facts

    choice = choose_device(read, setting, settings.get("ACESTEP_GPU_DEVICE") or None, mps=mps_available())
    if choice.gpu is not None and len(facts) == 1:
        return torch.device("cuda")  # the only GPU (a server's worker sees one): named as before
    return torch.device(choice.torch_name)


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


# The simulated GPU size set by apply_vram_cap (GiB), so memory-dependent sizes follow the cap.
_vram_cap_gib: float | None = None


def memory_gib(device: torch.device) -> tuple[float, float]:
    """(free, total) GiB of a CUDA device as this process may use it (the cap applied).

    Free includes blocks this process's allocator has cached but not handed out: after one big job
    the driver reports little free memory that is in fact ours to reuse.
    """
    free, total = (v / 2**30 for v in torch.cuda.mem_get_info(device))
    allocated = torch.cuda.memory_allocated(device) / 2**30
    cached = torch.cuda.memory_reserved(device) / 2**30 - allocated
    if _vram_cap_gib is not None and _vram_cap_gib < total:
        return max(min(free + cached, _vram_cap_gib - CONTEXT_RESERVE_GIB - allocated), 0.0), _vram_cap_gib
    return free + cached, total


def vae_decode_chunk_frames(device: torch.device) -> int:
    """Latent frames per VAE decode tile (``memory/fit.decode_tile_frames``, from the card's total
    memory or the ``MAX_CUDA_VRAM`` cap; ``ACESTEP_VAE_DECODE_CHUNK_SIZE`` overrides)."""
    override = current_settings().get("ACESTEP_VAE_DECODE_CHUNK_SIZE")
    if override:
        return max(int(override), 16)
    return decode_tile_frames(memory_gib(device)[1] if device.type == "cuda" else None)


def vae_encode_chunk_seconds(device: torch.device) -> int:
    """Seconds of audio per VAE encode tile (``memory/fit.encode_tile_seconds``; the real encoder
    holds about 0.1 GiB of half-precision activations per second of tile, BENCHMARKS.md).
    ``ACESTEP_VAE_ENCODE_CHUNK_SECONDS`` overrides."""
    override = current_settings().get("ACESTEP_VAE_ENCODE_CHUNK_SECONDS")
    if override:
        return max(int(override), 5)
    return encode_tile_seconds(memory_gib(device)[1] if device.type == "cuda" else None)


def total_gib(device: torch.device) -> float | None:
    """Total memory of a CUDA device in GiB (None for CPU and MPS: no VRAM tier applies there)."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory / 2**30


def apply_vram_cap(device: torch.device, cap_gib: float | None) -> float | None:
    """Make ``MAX_CUDA_VRAM`` a real cap: this process's allocator refuses to grow past it.

    Upstream only used the value to pick a tier, so a "4 GB" simulation still used 11 GB.
    Returns the fraction set, or None when nothing was capped.
    """
    global _vram_cap_gib
    total = total_gib(device)
    if total is None or cap_gib is None or cap_gib >= total:
        return None
    # The allocator's share excludes the context a card of that size would also have to hold.
    fraction = max((cap_gib - CONTEXT_RESERVE_GIB) / total, 0.01)
    # An index is required here: "cuda" alone (what resolve_device returns) raised ValueError.
    index = device.index if device.index is not None else torch.cuda.current_device()
    torch.cuda.set_per_process_memory_fraction(fraction, index)
    _vram_cap_gib = cap_gib
    return fraction


def clear_vram_cap(device: torch.device) -> None:
    """Lift :func:`apply_vram_cap` (the allocator may use the whole card again)."""
    global _vram_cap_gib
    if _vram_cap_gib is not None and device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.set_per_process_memory_fraction(1.0, index)
    _vram_cap_gib = None


class LocalTorchSource:
    """GPU facts from torch in this process: for processes that run models themselves (the CLI,
    the worker). A server process uses :mod:`acestep.memory.gpus` sources, which never touch CUDA."""

    def gpus(self) -> list[GpuInfo]:
        out = []
        if torch.cuda.is_available():
            for index in range(torch.cuda.device_count()):
                free, total = torch.cuda.mem_get_info(index)
                props = torch.cuda.get_device_properties(index)
                uuid = getattr(props, "uuid", None)
                out.append(
                    GpuInfo(
                        index,
                        props.name,
                        int(total),
                        int(total - free),
                        (props.major, props.minor),
                        uuid=f"GPU-{uuid}" if uuid is not None else None,
                        ordinal=index,
                    )
                )
        return out

    def process_gpu_bytes(self, pid: int) -> int | None:
        return None
