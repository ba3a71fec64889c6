"""Measured memory: snapshots before and after every load and unload, and giving memory back.

Figures are measured, never estimated: torch's allocator counters (only in a process that already
uses CUDA; reading them never initialises it), NVML's per-process bytes when available, and the
process's resident set size.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import sys
import time
from dataclasses import asdict, dataclass, field

from acestep.memory.gpus import DeviceStatsSource

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class MemorySnapshot:
    allocated_bytes: int = 0  # torch tensors on the GPU
    reserved_bytes: int = 0  # torch's caching allocator, tensors included
    process_gpu_bytes: int | None = None  # NVML: everything this process holds (context included)
    rss_bytes: int = 0  # host memory of the process (parked weights live here)
    pid: int = 0
    peak_allocated_bytes: int = 0  # since the last reset_peak() (the start of the last job)
    peak_reserved_bytes: int = 0
    gpu_used_bytes: int | None = None  # the whole GPU's used memory (NVML), every process included

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MemoryReport:
    """One load or unload: what it did, how long it took, and memory before and after."""

    action: str  # load | park | free | recover
    before: MemorySnapshot
    after: MemorySnapshot
    seconds: float
    residency: dict[str, str] = field(default_factory=dict)
    note: str = ""

    def as_dict(self) -> dict:
        freed = self.before.reserved_bytes - self.after.reserved_bytes
        return {
            "action": self.action,
            "seconds": round(self.seconds, 4),
            "before": self.before.as_dict(),
            "after": self.after.as_dict(),
            "freed_reserved_bytes": freed,
            "freed_process_gpu_bytes": (
                None
                if self.before.process_gpu_bytes is None or self.after.process_gpu_bytes is None
                else self.before.process_gpu_bytes - self.after.process_gpu_bytes
            ),
            "residency": dict(self.residency),
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, data: dict) -> MemoryReport:
        return cls(
            action=data["action"],
            before=MemorySnapshot(**data["before"]),
            after=MemorySnapshot(**data["after"]),
            seconds=data["seconds"],
            residency=data.get("residency", {}),
            note=data.get("note", ""),
        )


def _cuda_in_use() -> bool:
    """True only when this process already initialised CUDA (so reading counters changes nothing)."""
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def snapshot(source: DeviceStatsSource | None = None) -> MemorySnapshot:
    allocated = reserved = peak_allocated = peak_reserved = 0
    if _cuda_in_use():
        import torch

        devices = range(torch.cuda.device_count())
        allocated = sum(torch.cuda.memory_allocated(i) for i in devices)
        reserved = sum(torch.cuda.memory_reserved(i) for i in devices)
        peak_allocated = sum(torch.cuda.max_memory_allocated(i) for i in devices)
        peak_reserved = sum(torch.cuda.max_memory_reserved(i) for i in devices)
    pid = os.getpid()
    return MemorySnapshot(
        allocated_bytes=int(allocated),
        reserved_bytes=int(reserved),
        peak_allocated_bytes=int(peak_allocated),
        peak_reserved_bytes=int(peak_reserved),
        process_gpu_bytes=source.process_gpu_bytes(pid) if source is not None else None,
        rss_bytes=rss_bytes(),
        pid=pid,
    )


def reset_peak() -> None:
    """Start a new peak-memory window (the runner calls it at the start of every job)."""
    if _cuda_in_use():
        import torch

        for index in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(index)


def malloc_trim() -> bool:
    """Hand freed host heap back to the OS (glibc keeps it otherwise, so parked-then-freed weights
    would still count against the machine)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False


def release_cached() -> None:
    """gc, then return cached GPU blocks and IPC handles, then trim the host heap."""
    gc.collect()
    if _cuda_in_use():
        import torch

        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.ipc_collect()
        # Pinned host buffers of parked weights go to a host cache, not back to the OS.
        empty_host_cache = getattr(torch._C, "_host_emptyCache", None)
        if empty_host_cache is not None:
            empty_host_cache()
    malloc_trim()


class Stopwatch:
    def __init__(self) -> None:
        self.started = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started
