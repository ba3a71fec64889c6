"""``MemoryStatus``: what ``GET /v1/memory`` (and the UI, MCP and CLI) show, typed once.

One server fills the decision fields from its ``MemoryManager`` and the worker fields from its
supervisor (``acestep/worker/supervisor.py``); a cluster's API server fills ``workers`` from the
workers' adverts (``acestep/cluster/control.py``). ``as_dict`` gives the JSON each has always shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class MemoryStatus:
    device: str
    gpu: dict[str, Any] | None = None
    tier: str | None = None
    limits: dict[str, Any] | None = None
    plan: dict[str, Any] | None = None
    keep_alive: dict[str, Any] | None = None
    unload_when_busy: str | None = None
    precision: dict[str, Any] | None = None
    quantization: dict[str, Any] | None = None  # mode per component (acestep/memory/quantization.py)
    fit: dict[str, Any] | None = None  # the loaded DiT's rating and computed peaks (memory/fit.py)
    worker: dict[str, Any] | None = None  # the GPU worker: mode, pid, state, running job...
    residency: dict[str, str] | None = None
    adapters: dict[str, Any] | None = None
    last_reports: list[dict[str, Any]] = field(default_factory=list)
    workers: list[dict[str, Any]] | None = None  # a cluster's worker adverts (None: one server)

    @property
    def is_cluster(self) -> bool:
        return self.workers is not None

    def with_worker(self, worker: dict[str, Any], residency: dict[str, str], adapters: dict) -> MemoryStatus:
        return replace(self, worker=worker, residency=residency, adapters=adapters)

    @classmethod
    def cluster(cls, workers: list[dict[str, Any]]) -> MemoryStatus:
        return cls(device="workers", workers=workers)

    def as_dict(self) -> dict[str, Any]:
        if self.workers is not None:
            return {
                "mode": "cluster",
                "device": self.device,
                "workers": self.workers,
                "live_workers": sum(1 for w in self.workers if w["alive"]),
            }
        return {
            "device": self.device,
            "gpu": self.gpu,
            "tier": self.tier,
            "limits": self.limits,
            "plan": self.plan,
            "keep_alive": self.keep_alive,
            "unload_when_busy": self.unload_when_busy,
            "precision": self.precision,
            "quantization": self.quantization,
            "fit": self.fit,
            "worker": self.worker,
            "residency": self.residency,
            "adapters": self.adapters,
            "last_reports": list(self.last_reports),
        }


__all__ = ["MemoryStatus"]
