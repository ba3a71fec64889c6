"""``MemoryManager``: one object that knows the GPU, the tier and limits, the residency plan and
keep-alive, validates requests before they are queued, and reports measured figures.

It decides; the GPU worker executes (``acestep.worker.supervisor.Supervisor`` starts and owns it,
following these decisions). The manager itself never imports torch, so a server process
built on it never creates a CUDA context. ``get_memory_manager()`` is the process-wide instance
(``acestep.memory_manager`` re-exports it under the name users already know).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping

from loguru import logger

from acestep.memory.device_choice import choose_device
from acestep.memory.fit import Fit, fit_plan
from acestep.memory.gpus import DeviceStatsSource, GpuInfo, default_source
from acestep.memory.keep_alive import KeepAlivePolicy
from acestep.memory.limits import Limits
from acestep.memory.precision import attention_backend, fast_mode, plan_for_device, rope_mode
from acestep.memory.quantization import plan_quantization
from acestep.memory.report import MemoryReport
from acestep.memory.residency import ResidencyPlan, plan_for
from acestep.memory.status import MemoryStatus
from acestep.request import GenerationRequest
from acestep.settings import current as current_settings
from acestep.settings import value as setting_value

REPORTS_KEPT = 20


class MemoryManager:
    def __init__(
        self,
        source: DeviceStatsSource | None = None,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.env = dict(current_settings() if env is None else env)
        self.source = source or default_source()
        self.clock = clock
        # The same function decides in the worker (acestep/memory/devices.py); a server has no
        # torch to ask about MPS, so it plans for CUDA or the CPU and tells its worker which.
        env = self.env
        self.gpu: GpuInfo | None = choose_device(
            self.source.gpus, env.get("ACESTEP_DEVICE"), env.get("ACESTEP_GPU_DEVICE")
        ).gpu
        self.limits = Limits.for_gpu(self.gpu.total_gib if self.gpu else None, self.env)
        self.plan: ResidencyPlan = plan_for(self.limits, "cuda" if self.gpu else "cpu")
        self.keep_alive = KeepAlivePolicy.from_env(self.env)
        busy = setting_value(self.env, "ACESTEP_UNLOAD_WHEN_BUSY").lower()
        if busy not in ("wait", "refuse"):
            raise ValueError(f"ACESTEP_UNLOAD_WHEN_BUSY must be wait or refuse, got {busy!r}")
        self.refuse_unload_when_busy = busy == "refuse"
        capability = self.gpu.compute_capability[0] if self.gpu and self.gpu.compute_capability else None
        self.precision = plan_for_device(
            "cuda" if self.gpu else "cpu", capability, self.env.get("ACESTEP_DTYPE"), rope_mode(self.env)
        )
        self.dtype = self.precision.name
        # Refused here, before any worker starts, when a mode asked for does not fit this card.
        self.quantization = plan_quantization(
            "cuda" if self.gpu else "cpu",
            self.limits.gib,
            self.gpu.compute_capability if self.gpu else None,
            self.env,
        )
        self.attention = attention_backend(self.env)
        self.fast = fast_mode(self.env)
        self.rope = rope_mode(self.env)
        self.worker_in_process = setting_value(self.env, "ACESTEP_WORKER").lower() == "inprocess"
        self.lm_name: str | None = None  # the LM folder the worker will load, when known
        self.max_loaded_dits = dit_capacity(self.limits, setting_value(self.env, "ACESTEP_MAX_LOADED_DITS"))
        self.reports: deque[dict] = deque(maxlen=REPORTS_KEPT)
        self.fit: Fit | None = None  # set once the DiT is known (fit_dit)

    # -- policy --------------------------------------------------------------------------

    def validate(self, request: GenerationRequest, uses_lm: bool | None = None) -> float:
        """Refuse what cannot fit (``MemoryLimitError``) or a forbidden keep-alive (``KeepAliveError``);
        returns the keep-alive in seconds that the job will leave behind."""
        uses_lm = request.uses_lm if uses_lm is None else uses_lm
        self.limits.check(request, uses_lm=uses_lm)
        if uses_lm and self.lm_name:
            self.limits.check_lm(self.lm_name)
        return self.keep_alive.for_request(request.keep_alive)

    def fit_dit(self, dit_name: str, is_xl: bool) -> Fit:
        """Adopt the limits and plan the DiT a server starts with needs, as computed from its
        weight bytes in this card's dtype and quantization (``acestep/memory/fit.py``: more
        offload, a streamed DiT or a smaller batch limit); ``MemoryLimitError`` where it does not
        fit this GPU. Before the worker starts: it is handed these decisions."""
        compute = "cuda" if self.gpu else "cpu"
        self.limits, self.plan, self.fit = fit_plan(
            self.limits,
            compute,
            is_xl,
            self.precision,
            self.quantization,
            self.lm_name,
            self.plan,
        )
        return self.fit

    def worker_env(self) -> dict[str, str]:
        """Environment for the worker process: only the chosen GPU visible, same settings."""
        env = {key: value for key, value in self.env.items() if key.startswith(("ACESTEP_", "MAX_CUDA_VRAM"))}
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        if self.gpu is None:
            env["ACESTEP_DEVICE"] = "cpu"
            env["CUDA_VISIBLE_DEVICES"] = ""
        else:
            env["ACESTEP_DEVICE"] = "cuda"
            env["ACESTEP_GPU_DEVICE"] = "0"  # the only GPU the worker sees
            env["CUDA_VISIBLE_DEVICES"] = self.gpu.uuid or str(self.gpu.index)
        return env

    def banner(self) -> str:
        gpu = "no GPU (CPU)"
        if self.gpu is not None:
            gpu = f"GPU {self.gpu.index} {self.gpu.name}, {self.gpu.total_gib:.1f} GiB"
        limits = self.limits
        simulated = f", simulated as {limits.gib:g} GiB by MAX_CUDA_VRAM" if limits.simulated else ""
        offload = (
            "everything resident"
            if not limits.offload_to_cpu
            else "text encoder + VAE offloaded" + (" + DiT offloaded" if limits.offload_dit_to_cpu else "")
        )
        return (
            f"acestep memory: {gpu}{simulated}; tier {limits.tier.name}; max {limits.max_duration:g} s "
            f"({limits.max_duration_lm:g} s with LM), batch {limits.max_batch} "
            f"({limits.max_batch_lm} with LM); LM {'on' if limits.lm_enabled else 'off'}; {offload}; "
            f"keep-alive {self.keep_alive.as_dict()['default']}"
        )

    def in_process_device(self, device: str) -> str:
        """The device an in-process engine asked for ``device`` uses: the chosen GPU for ``auto``."""
        if self.gpu is not None and self.gpu.ordinal is not None and device == "auto":
            return f"cuda:{self.gpu.ordinal}"
        return device

    def record(self, report: MemoryReport, reason: str) -> None:
        """Keep (and log) a measured report of the worker; the last ``REPORTS_KEPT`` are shown."""
        entry = report.as_dict() | {"reason": reason, "at": time.time()}
        self.reports.append(entry)
        logger.info(
            f"memory {report.action} ({reason}) in {report.seconds:.2f} s: reserved "
            f"{report.before.reserved_bytes / 2**20:.0f} -> {report.after.reserved_bytes / 2**20:.0f} MiB"
        )

    # -- reports ---------------------------------------------------------------------------

    def status(self) -> MemoryStatus:
        """Tier, limits, plan, keep-alive, precision and the last measured reports; the worker's part
        is filled in by whoever runs it (``acestep/worker/supervisor.py``)."""
        gpus = self.source.gpus() if self.gpu is not None else []
        live = next((g for g in gpus if g.index == self.gpu.index), self.gpu) if self.gpu else None
        return MemoryStatus(
            device="cpu" if self.gpu is None else f"cuda:{self.gpu.index}",
            gpu=live.as_dict() if live else None,
            tier=self.limits.tier.name,
            limits=self.limits.as_dict(),
            plan=self.plan.as_dict(),
            keep_alive=self.keep_alive.as_dict(),
            unload_when_busy="refuse" if self.refuse_unload_when_busy else "wait",
            precision={
                "dtype": self.dtype,
                "attention": self.attention,
                "rope": self.rope,
                "fast_dit": self.fast,
            },
            quantization=self.quantization.as_dict(),
            fit=None if self.fit is None else self.fit.as_dict(),
            last_reports=list(self.reports),
        )

    def get_status(self) -> dict:
        """``status()`` as plain data (no worker: this object decides, it runs nothing)."""
        return self.status().as_dict()


SLOT_COUNT = 3  # upstream's model slots (ACESTEP_CONFIG_PATH, ..._PATH2, ..._PATH3)
# Three XL DiTs (about 10 GB each in bf16) beside the 4B LM and the VAE need about this much; not
# measured on a GPU yet (BENCHMARKS.md), so below it one DiT at a time.
ONE_DIT_BELOW_GIB = 48.0


def dit_capacity(limits: Limits, override: int = 0) -> int:
    """How many DiTs may stay loaded at once: the operator's ``ACESTEP_MAX_LOADED_DITS``, else one
    on a tier that offloads or below ``ONE_DIT_BELOW_GIB``, else one per slot (docs/api.md "Model slots")."""
    if override and override > 0:
        return int(override)
    small = limits.gib is not None and limits.gib < ONE_DIT_BELOW_GIB
    return 1 if limits.offload_to_cpu or small else SLOT_COUNT


def dits_to_free(loaded: list[str], wanted: str, capacity: int) -> list[str]:
    """The DiTs to free before ``wanted`` loads: the least recently used first, until it fits.
    ``loaded`` is in use order, oldest first; the worker executes this decision."""
    others = [name for name in loaded if name != wanted]
    if wanted in loaded:
        return []
    excess = len(others) + 1 - max(1, capacity)
    return others[: max(0, excess)]


def worker_summary(status: dict) -> dict:
    """A ``get_status()`` reduced to what a worker advertises: residency state, running job, device,
    VRAM (bytes) and residency map; the same shape for one server's worker and a cluster's."""
    worker = status["worker"] or {}
    gpu = status["gpu"] or {}
    return {
        "state": worker.get("state", "unloaded"),
        "running": worker.get("running"),
        "device": status["device"],
        "gpu_name": gpu.get("name"),
        "tier": status["tier"],
        "vram_used_bytes": worker.get("process_gpu_bytes"),
        "vram_total_bytes": int(gpu["total_gib"] * 2**30) if gpu.get("total_gib") else None,
        "residency": status["residency"],
        "adapters": status.get("adapters"),
        "unload_in_s": worker.get("unload_in_s"),
    }


_manager: MemoryManager | None = None
_manager_lock = threading.Lock()


def get_memory_manager() -> MemoryManager:
    """The process-wide manager, built from the environment on first use."""
    global _manager
    with _manager_lock:
        if _manager is None:
            _manager = MemoryManager()
        return _manager


def set_memory_manager(manager: MemoryManager | None) -> MemoryManager | None:
    """Replace the process-wide manager (entry points that take flags, and tests); returns the old one."""
    global _manager
    with _manager_lock:
        old, _manager = _manager, manager
        return old


def offload_overrides(offload: bool | None, offload_dit: bool | None) -> dict[str, str]:
    """CLI flags as the settings they override."""
    out = {}
    if offload is not None:
        out["ACESTEP_OFFLOAD_TO_CPU"] = "true" if offload else "false"
    if offload_dit is not None:
        out["ACESTEP_OFFLOAD_DIT_TO_CPU"] = "true" if offload_dit else "false"
    return out


__all__ = [
    "MemoryManager",
    "dit_capacity",
    "dits_to_free",
    "get_memory_manager",
    "offload_overrides",
    "set_memory_manager",
    "worker_summary",
]
