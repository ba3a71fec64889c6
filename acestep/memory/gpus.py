"""Which GPUs exist and how much memory each has in use, without initialising CUDA here.

The server process must never create a CUDA context (the GPU work lives in a worker process so
that a ``free`` unload can end it). So GPUs are read through NVML (``nvidia-ml-py``) when it is
present, otherwise by a short-lived probe subprocess that asks torch and exits. Tests inject a
:class:`StaticSource` instead.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass, replace
from typing import Protocol

from acestep.settings import current as current_settings

GIB = 2**30


@dataclass(frozen=True)
class GpuInfo:
    """One GPU. ``index`` is the source's own index (NVML: physical; torch: this process's
    ordinal); ``uuid`` (``GPU-...``) names it for ``CUDA_VISIBLE_DEVICES`` in another process;
    ``ordinal`` is its torch index in this process when known."""

    index: int
    name: str
    total_bytes: int
    used_bytes: int
    compute_capability: tuple[int, int] | None = None
    uuid: str | None = None
    ordinal: int | None = None

    @property
    def free_bytes(self) -> int:
        return max(self.total_bytes - self.used_bytes, 0)

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GIB

    def as_dict(self) -> dict:
        return asdict(self) | {"free_bytes": self.free_bytes}


class DeviceStatsSource(Protocol):
    """Where GPU facts come from; injectable so tier logic is testable without a GPU."""

    def gpus(self) -> list[GpuInfo]: ...

    def process_gpu_bytes(self, pid: int) -> int | None:
        """GPU memory held by process ``pid`` on any GPU; None when the driver cannot say."""
        ...


class StaticSource:
    """Fixed GPU facts (tests, and explaining a plan for a card you do not have)."""

    def __init__(self, gpus: list[GpuInfo] | None = None, process_bytes: dict[int, int] | None = None):
        self._gpus = list(gpus or [])
        self.process_bytes = dict(process_bytes or {})

    def gpus(self) -> list[GpuInfo]:
        return list(self._gpus)

    def set_used(self, index: int, used_bytes: int) -> None:
        self._gpus = [replace(g, used_bytes=used_bytes) if g.index == index else g for g in self._gpus]

    def process_gpu_bytes(self, pid: int) -> int | None:
        return self.process_bytes.get(pid)


class NvmlSource:
    """NVML via ``nvidia-ml-py``: no CUDA context, and it can see per-process usage."""

    _lock = threading.Lock()
    _initialised = False

    def __init__(self) -> None:
        import pynvml  # noqa: F401  (ImportError means NVML is unavailable)

        self._ensure_init()

    @classmethod
    def _ensure_init(cls) -> None:
        import pynvml

        with cls._lock:
            if not cls._initialised:
                pynvml.nvmlInit()
                cls._initialised = True

    def gpus(self) -> list[GpuInfo]:
        import pynvml

        out = []
        visible = _visible_filter()
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
            if visible is not None and not visible(index, uuid):
                continue  # NVML ignores CUDA_VISIBLE_DEVICES; honour it here
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            try:
                capability = tuple(pynvml.nvmlDeviceGetCudaComputeCapability(handle))
            except pynvml.NVMLError:
                capability = None
            out.append(
                GpuInfo(
                    index=index,
                    name=_text(name),
                    total_bytes=int(memory.total),
                    used_bytes=int(memory.used),
                    compute_capability=capability,  # type: ignore[arg-type]
                    uuid=uuid,
                )
            )
        return out

    def process_gpu_bytes(self, pid: int) -> int | None:
        import pynvml

        total, seen = 0, False
        try:
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if proc.pid == pid:
                        seen = True
                        total += int(proc.usedGpuMemory or 0)
        except pynvml.NVMLError:
            return None
        # "Not listed" is ambiguous (a process without a context, or host pids inside a
        # container), so it is reported as unknown rather than as zero.
        return total if seen else None


class ProbeSource:
    """Ask torch in a throwaway subprocess (used when NVML is missing); the answer is cached."""

    def __init__(self, timeout: float = 120.0):
        self._timeout = timeout
        self._cached: list[GpuInfo] | None = None

    def gpus(self) -> list[GpuInfo]:
        if self._cached is None:
            try:
                done = subprocess.run(
                    [sys.executable, "-m", "acestep.memory.gpus"],
                    capture_output=True,
                    text=True,
                    timeout=self._timeout,
                    check=True,
                )
                rows = json.loads(done.stdout.strip().splitlines()[-1])
            except (subprocess.SubprocessError, ValueError, IndexError, OSError):
                rows = []
            self._cached = [
                GpuInfo(
                    **(
                        row
                        | {
                            "compute_capability": tuple(row["compute_capability"] or ()) or None,
                            "ordinal": None,
                        }
                    )
                )
                for row in rows
            ]
        return list(self._cached)

    def process_gpu_bytes(self, pid: int) -> int | None:
        return None


def default_source() -> DeviceStatsSource:
    """NVML when the library and a driver are present, else the torch probe."""
    try:
        return NvmlSource()
    except Exception:  # ImportError, or pynvml.NVMLError (no driver / no library)
        return ProbeSource()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _visible_filter():
    """A predicate (index, uuid) for ``CUDA_VISIBLE_DEVICES`` (None = no restriction)."""
    value = current_settings().get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    parts = [p.strip() for p in value.split(",") if p.strip()]
    return lambda index, uuid: any(
        (p.isdigit() and int(p) == index) or (not p.isdigit() and uuid.startswith(p)) for p in parts
    )


def select_gpu(gpus: list[GpuInfo], choice: str | None) -> GpuInfo | None:
    """``ACESTEP_GPU_DEVICE``: ``auto`` (or unset) = the GPU with the least memory in use; ``N`` = GPU N;
    ``cpu`` or ``none`` = no GPU. Returns None when there is no GPU to use."""
    choice = (choice or "auto").strip().lower()
    if choice in ("cpu", "none", "-1"):
        return None
    candidates = list(gpus)  # sources already apply CUDA_VISIBLE_DEVICES
    if not candidates:
        return None
    if choice == "auto":
        return min(candidates, key=lambda g: (g.used_bytes, g.index))
    if not choice.isdigit():
        raise ValueError(f"ACESTEP_GPU_DEVICE must be 'auto', 'cpu' or a GPU index, got {choice!r}")
    for gpu in candidates:
        if gpu.index == int(choice):
            return gpu
    have = ", ".join(str(g.index) for g in candidates)
    raise ValueError(f"ACESTEP_GPU_DEVICE={choice} but the visible GPUs are: {have}")


def _probe() -> None:
    """Print every CUDA device as one JSON line (run in a subprocess by :class:`ProbeSource`)."""
    from acestep.memory.devices import LocalTorchSource

    print(json.dumps([asdict(gpu) for gpu in LocalTorchSource().gpus()]))


if __name__ == "__main__":
    _probe()
