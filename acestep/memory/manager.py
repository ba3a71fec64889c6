"""``MemoryManager``: one object that knows the GPU, the tier and limits, the residency plan and
keep-alive, validates requests before they are queued, and reports measured figures.

It decides; the GPU worker executes. The manager itself never imports torch, so a server process
built on it never creates a CUDA context. ``get_memory_manager()`` is the process-wide instance
(``acestep.memory_manager`` re-exports it under the name users already know).
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from loguru import logger

from acestep.memory.gpus import DeviceStatsSource, GpuInfo, default_source, select_gpu
from acestep.memory.keep_alive import KeepAlivePolicy
from acestep.memory.limits import Limits
from acestep.memory.precision import attention_backend, fast_mode, planned_dtype, rope_mode
from acestep.memory.report import MemoryReport
from acestep.memory.residency import ResidencyPlan, plan_for
from acestep.request import GenerationRequest

REPORTS_KEPT = 20


class MemoryManager:
    def __init__(
        self,
        source: DeviceStatsSource | None = None,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.env = dict(os.environ if env is None else env)
        self.source = source or default_source()
        self.clock = clock
        device = (self.env.get("ACESTEP_DEVICE") or "auto").strip().lower()
        gpus = [] if device == "cpu" else self.source.gpus()
        self.gpu: GpuInfo | None = select_gpu(gpus, self.env.get("ACESTEP_GPU_DEVICE"))
        self.limits = Limits.for_gpu(self.gpu.total_gib if self.gpu else None, self.env)
        self.plan: ResidencyPlan = plan_for(self.limits, "cuda" if self.gpu else "cpu")
        self.keep_alive = KeepAlivePolicy.from_env(self.env)
        busy = (self.env.get("ACESTEP_UNLOAD_WHEN_BUSY") or "wait").strip().lower()
        if busy not in ("wait", "refuse"):
            raise ValueError(f"ACESTEP_UNLOAD_WHEN_BUSY must be wait or refuse, got {busy!r}")
        self.refuse_unload_when_busy = busy == "refuse"
        capability = self.gpu.compute_capability[0] if self.gpu and self.gpu.compute_capability else None
        self.dtype = planned_dtype("cuda" if self.gpu else "cpu", capability, self.env.get("ACESTEP_DTYPE"))
        self.attention = attention_backend(self.env)
        self.fast = fast_mode(self.env)
        self.rope = rope_mode(self.env)
        self.dispatcher = None
        self.lm_name: str | None = None  # the LM folder the worker will load, when known
        self.reports: deque[dict] = deque(maxlen=REPORTS_KEPT)
        self._lock = threading.Lock()

    # -- policy --------------------------------------------------------------------------

    def validate(self, request: GenerationRequest, uses_lm: bool | None = None) -> float:
        """Refuse what cannot fit (``MemoryLimitError``) or a forbidden keep-alive (``KeepAliveError``);
        returns the keep-alive in seconds that the job will leave behind."""
        uses_lm = request.uses_lm if uses_lm is None else uses_lm
        self.limits.check(request, uses_lm=uses_lm)
        if uses_lm and self.lm_name:
            self.limits.check_lm(self.lm_name)
        return self.keep_alive.for_request(request.keep_alive)

    def worker_env(self) -> dict[str, str]:
        """Environment for the worker process: only the chosen GPU visible, same settings."""
        env = {key: value for key, value in self.env.items() if key.startswith(("ACESTEP_", "MAX_CUDA_VRAM"))}
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        if self.gpu is None:
            env["ACESTEP_DEVICE"] = "cpu"
            env["CUDA_VISIBLE_DEVICES"] = ""
        else:
            env["ACESTEP_DEVICE"] = "cuda"
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

    # -- the GPU worker --------------------------------------------------------------------

    def start(self, spec, in_process: bool | None = None):
        """Start the dispatcher over a runner for ``spec`` (an ``EngineSpec``). By default the runner
        is a worker process; ``ACESTEP_WORKER=inprocess`` (or ``in_process=True``) keeps it here."""
        from acestep.worker.dispatcher import Dispatcher

        if in_process is None:
            in_process = (self.env.get("ACESTEP_WORKER") or "process").lower() == "inprocess"
        with self._lock:
            if self.dispatcher is not None:
                raise RuntimeError("the memory manager already runs a worker")
            if in_process:
                from acestep.worker.runner import InProcessRunner

                if self.gpu is not None and self.gpu.ordinal is not None and spec.device == "auto":
                    spec = replace(spec, device=f"cuda:{self.gpu.ordinal}")
                runner = InProcessRunner(spec, source=self.source, limits=self.limits)
            else:
                from acestep.worker.process import ProcessRunner

                runner = ProcessRunner(
                    spec,
                    source=self.source,
                    env=self.worker_env(),
                    gpu_index=self.gpu.index if self.gpu else None,
                )
            self.dispatcher = Dispatcher(
                runner,
                self.keep_alive,
                clock=self.clock,
                refuse_unload_when_busy=self.refuse_unload_when_busy,
                on_report=self._record,
            )
        logger.info(self.banner())
        return self.dispatcher

    def _require_worker(self):
        if self.dispatcher is None:
            raise RuntimeError("no model is being served; call MemoryManager.start(spec) first")
        return self.dispatcher

    def submit(
        self,
        request: GenerationRequest,
        output_dir: str | Path,
        uses_lm: bool | None = None,
        job_id: str | None = None,
        on_done: list | None = None,
        lm_only: bool = False,
        on_progress: list | None = None,
    ):
        """Validate, then queue; returns the dispatcher's ``Job``."""
        keep_alive = self.validate(request, uses_lm=uses_lm)
        return self._require_worker().submit(
            request,
            output_dir,
            keep_alive,
            job_id=job_id,
            on_done=on_done,
            lm_only=lm_only,
            on_progress=on_progress,
        )

    def unload(self, level: str = "free", timeout: float | None = None) -> dict:
        """Unload after the running job; the measured report (a no-op report when nothing runs)."""
        if self.dispatcher is None:
            return {"action": level, "note": "no model is loaded", "seconds": 0.0}
        return self.dispatcher.unload(level, timeout).as_dict()

    def load(self, timeout: float | None = None) -> dict:
        return self._require_worker().load(timeout).as_dict()

    def load_lora(self, names: list[str], timeout: float | None = None) -> dict:
        """Load LoRA adapters into the served DiT after the running job; the measured report, with
        the adapters now resident."""
        report = self._require_worker().load_lora(names, timeout).as_dict()
        return report | {"adapters": self.dispatcher.runner.adapters()}

    def unload_lora(self, names: list[str] | None = None, timeout: float | None = None) -> dict:
        """Remove LoRA adapters (all by default) after the running job; the measured report."""
        if self.dispatcher is None:
            return {"action": "lora_unload", "note": "no model is loaded", "seconds": 0.0}
        report = self.dispatcher.unload_lora(names, timeout).as_dict()
        return report | {"adapters": self.dispatcher.runner.adapters()}

    def _record(self, report: MemoryReport, reason: str) -> None:
        entry = report.as_dict() | {"reason": reason, "at": time.time()}
        self.reports.append(entry)
        logger.info(
            f"memory {report.action} ({reason}) in {report.seconds:.2f} s: reserved "
            f"{report.before.reserved_bytes / 2**20:.0f} -> {report.after.reserved_bytes / 2**20:.0f} MiB"
        )

    def close(self) -> None:
        with self._lock:
            dispatcher, self.dispatcher = self.dispatcher, None
        if dispatcher is not None:
            dispatcher.stop(unload=True)

    # -- reports ---------------------------------------------------------------------------

    def get_status(self) -> dict:
        """Tier, limits, plan, keep-alive, residency, worker and the last measured reports."""
        gpus = self.source.gpus() if self.gpu is not None else []
        live = next((g for g in gpus if g.index == self.gpu.index), self.gpu) if self.gpu else None
        status = {
            "device": "cpu" if self.gpu is None else f"cuda:{self.gpu.index}",
            "gpu": live.as_dict() if live else None,
            "tier": self.limits.tier.name,
            "limits": self.limits.as_dict(),
            "plan": self.plan.as_dict(),
            "keep_alive": self.keep_alive.as_dict(),
            "unload_when_busy": "refuse" if self.refuse_unload_when_busy else "wait",
            "precision": {
                "dtype": self.dtype,
                "attention": self.attention,
                "rope": self.rope,
                "fast_dit": self.fast,
            },
            "worker": None,
            "residency": None,
            "adapters": None,
            "last_reports": list(self.reports),
        }
        dispatcher = self.dispatcher
        if dispatcher is not None:
            runner = dispatcher.runner
            status["worker"] = {
                "mode": type(runner).__name__,
                "pid": runner.pid,
                "state": runner.state,
                "process_gpu_bytes": self.source.process_gpu_bytes(runner.pid) if runner.pid else None,
            } | dispatcher.status()
            status["residency"] = runner.residency()
            status["adapters"] = runner.adapters()
        return status


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


__all__ = ["MemoryManager", "get_memory_manager", "offload_overrides", "set_memory_manager", "worker_summary"]
