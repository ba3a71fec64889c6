"""``Supervisor``: owns the GPU worker (the dispatcher and its runner) of one process.

The ``MemoryManager`` (``acestep/memory/manager.py``) decides: which GPU, the limits, keep-alive,
whether the worker runs in this process. The supervisor follows those decisions: it builds the
runner and the dispatcher, validates each job with the manager before queueing it, and stops them.
It is the memory control a single server's faces hold (``app.state.manager``); a cluster's API
server holds ``ClusterControl`` (``acestep/cluster/control.py``) in its place, with the same
methods and the same ``MemoryStatus``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from loguru import logger

from acestep.memory.manager import MemoryManager
from acestep.memory.status import MemoryStatus
from acestep.request import GenerationRequest
from acestep.worker.dispatcher import Dispatcher
from acestep.worker.job import Job
from acestep.worker.runner import EngineSpec, Runner


class Supervisor:
    def __init__(self, manager: MemoryManager):
        self.manager = manager
        self.dispatcher: Dispatcher | None = None
        self._lock = threading.Lock()

    @property
    def lm_name(self) -> str | None:
        """The LM folder the worker will load (the manager checks requests against it)."""
        return self.manager.lm_name

    @lm_name.setter
    def lm_name(self, name: str | None) -> None:
        self.manager.lm_name = name

    @property
    def runner(self) -> Runner | None:
        return self.dispatcher.runner if self.dispatcher is not None else None

    def start(self, spec: EngineSpec, in_process: bool | None = None) -> Dispatcher:
        """Start the dispatcher over a runner for ``spec``. By default the runner is a worker
        process; ``ACESTEP_WORKER=inprocess`` (or ``in_process=True``) keeps it here."""
        manager = self.manager
        if in_process is None:
            in_process = manager.worker_in_process
        with self._lock:
            if self.dispatcher is not None:
                raise RuntimeError("the supervisor already runs a worker")
            runner: Runner
            spec = replace(spec, max_dits=manager.max_loaded_dits)  # the manager's decision
            if in_process:
                from acestep.worker.runner import InProcessRunner

                spec = replace(spec, device=manager.in_process_device(spec.device))
                runner = InProcessRunner(spec, source=manager.source, limits=manager.limits)
            else:
                from acestep.worker.process import ProcessRunner

                runner = ProcessRunner(
                    spec,
                    source=manager.source,
                    env=manager.worker_env(),
                    gpu_index=manager.gpu.index if manager.gpu else None,
                )
            self.dispatcher = Dispatcher(
                runner,
                manager.keep_alive,
                clock=manager.clock,
                refuse_unload_when_busy=manager.refuse_unload_when_busy,
                on_report=manager.record,
            )
        logger.info(manager.banner())
        return self.dispatcher

    def _require_worker(self) -> Dispatcher:
        if self.dispatcher is None:
            raise RuntimeError("no model is being served; call Supervisor.start(spec) first")
        return self.dispatcher

    def submit(
        self,
        request: GenerationRequest,
        output_dir: str | Path,
        uses_lm: bool | None = None,
        job_id: str | None = None,
        on_done: list[Callable[[Job], None]] | None = None,
        lm_only: bool = False,
        on_progress: list[Callable[[str, float], None]] | None = None,
        model: str | None = None,
    ) -> Job:
        """Validate (the manager's limits and keep-alive), then queue; ``model`` names the DiT."""
        keep_alive = self.manager.validate(request, uses_lm=uses_lm)
        return self._require_worker().submit(
            request,
            output_dir,
            keep_alive,
            job_id=job_id,
            on_done=on_done,
            lm_only=lm_only,
            on_progress=on_progress,
            model=model,
        )

    def unload(self, level: str = "free", timeout: float | None = None) -> dict:
        """Unload after the running job; the measured report (a no-op report when nothing runs)."""
        if self.dispatcher is None:
            return {"action": level, "note": "no model is loaded", "seconds": 0.0}
        return self.dispatcher.unload(level, timeout).as_dict()

    def load(self, timeout: float | None = None, model: str | None = None) -> dict:
        """Load (or wake) ``model``, default the DiT in use; the measured report with ``model``."""
        dispatcher = self._require_worker()
        report = dispatcher.load(timeout, model).as_dict()
        return report | {"model": model or dispatcher.runner.current}

    def models(self) -> dict[str, str]:
        """The worker's loaded DiTs: name -> ready | parked (empty while nothing is loaded)."""
        return self.dispatcher.runner.models() if self.dispatcher is not None else {}

    def load_lora(self, names: list[str], timeout: float | None = None) -> dict:
        """Load LoRA adapters into the served DiT after the running job; the measured report, with
        the adapters now resident."""
        dispatcher = self._require_worker()
        report = dispatcher.load_lora(names, timeout).as_dict()
        return report | {"adapters": dispatcher.runner.adapters()}

    def unload_lora(self, names: list[str] | None = None, timeout: float | None = None) -> dict:
        """Remove LoRA adapters (all by default) after the running job; the measured report."""
        dispatcher = self.dispatcher
        if dispatcher is None:
            return {"action": "lora_unload", "note": "no model is loaded", "seconds": 0.0}
        report = dispatcher.unload_lora(names, timeout).as_dict()
        return report | {"adapters": dispatcher.runner.adapters()}

    def close(self) -> None:
        with self._lock:
            dispatcher, self.dispatcher = self.dispatcher, None
        if dispatcher is not None:
            dispatcher.stop(unload=True)

    def status(self) -> MemoryStatus:
        """The manager's decisions, with the worker's mode, pid, state, residency and adapters."""
        status = self.manager.status()
        dispatcher = self.dispatcher
        if dispatcher is None:
            return status
        runner = dispatcher.runner
        pid = runner.pid
        worker = {
            "mode": type(runner).__name__,
            "pid": pid,
            "state": runner.state,
            "process_gpu_bytes": self.manager.source.process_gpu_bytes(pid) if pid else None,
        } | dispatcher.status()
        return status.with_worker(worker, runner.residency(), runner.adapters())

    def get_status(self) -> dict:
        return self.status().as_dict()


__all__ = ["Supervisor"]
