"""``ProcessRunner``: the runner interface, served by a separate worker process.

The server process never touches CUDA; the worker does. ``free`` ends the worker, so the GPU goes
back to zero for this service, CUDA context included. A worker that dies mid-job fails that job
with the reason (exit code or signal) and is replaced by a fresh process.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

from loguru import logger

from acestep.engine.request import GenerationRequest, GenerationResult
from acestep.memory.gpus import DeviceStatsSource
from acestep.memory.report import MemoryReport, MemorySnapshot, Stopwatch
from acestep.memory.residency import COMPONENTS, Place
from acestep.worker.runner import EngineSpec, JobError, Progress

EXIT_TIMEOUT_S = 60.0


class WorkerCrashed(JobError):
    def __init__(self, message: str):
        super().__init__("crash", message)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "is still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with code {code}"


class ProcessRunner:
    """Same methods as :class:`InProcessRunner`; calls must not overlap (the dispatcher serialises)."""

    def __init__(
        self,
        spec: EngineSpec,
        source: DeviceStatsSource | None = None,
        env: Mapping[str, str] | None = None,
    ):
        self.spec = spec
        self.source = source
        self.env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self._reader = None
        self._ids = itertools.count(1)
        self._state = "unloaded"
        self._residency = dict.fromkeys(COMPONENTS, Place.UNLOADED.value)
        self.starts = 0  # how many worker processes this runner has started
        self._job_load: MemoryReport | None = None
        self._lock = threading.Lock()

    # -- process management -------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start a fresh worker process (models load on the first job or ``load``)."""
        read_fd, write_fd = os.pipe()
        env = os.environ | self.env | {"PYTHONUNBUFFERED": "1"}
        command = [
            sys.executable,
            "-m",
            "acestep.worker.child",
            "--fd",
            str(write_fd),
            "--spec",
            json.dumps(self.spec.as_dict()),
        ]
        try:
            self.proc = subprocess.Popen(
                command, stdin=subprocess.PIPE, pass_fds=(write_fd,), env=env, text=True
            )
        finally:
            os.close(write_fd)
        self._reader = os.fdopen(read_fd, "r")
        self.starts += 1
        self._set_unloaded()
        hello = self._read()
        if hello.get("event") != "ready":
            raise WorkerCrashed(f"the GPU worker did not start: {hello}")
        logger.info(f"GPU worker process {self.proc.pid} started")

    def _set_unloaded(self) -> None:
        self._state = "unloaded"
        self._residency = dict.fromkeys(COMPONENTS, Place.UNLOADED.value)

    def _ensure_started(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            logger.warning(f"GPU worker {self.proc.pid} {describe_exit(self.proc.returncode)} while idle")
            self._reap()
        if self.proc is None:
            self.start()

    def _reap(self) -> int | None:
        code = None
        if self.proc is not None:
            code = self.proc.wait()
            for stream in (self.proc.stdin, self._reader):
                try:
                    if stream is not None:
                        stream.close()
                except OSError:
                    pass
        self.proc, self._reader = None, None
        self._set_unloaded()
        return code

    def restart(self) -> None:
        """Replace a dead (or live) worker with a fresh process."""
        with self._lock:
            if self.proc is not None:
                if self.proc.poll() is None:
                    self.proc.kill()
                self._reap()
            self.start()

    def kill(self) -> None:
        """SIGKILL the worker (tests, and a job the operator gave up on)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    # -- messaging -------------------------------------------------------------------------

    def _read(self) -> dict:
        line = self._reader.readline() if self._reader is not None else ""
        if not line:
            pid = self.proc.pid if self.proc else None
            code = self._reap()
            raise WorkerCrashed(f"the GPU worker process {pid} {describe_exit(code)} during the job")
        return json.loads(line)

    def _call(self, op: str, progress: Progress | None = None, **fields) -> dict:
        self._ensure_started()
        ident = next(self._ids)
        try:
            self.proc.stdin.write(json.dumps({"op": op, "id": ident, **fields}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pid, code = self.proc.pid, self._reap()
            raise WorkerCrashed(f"the GPU worker process {pid} {describe_exit(code)}") from None
        while True:
            message = self._read()
            if message.get("id") != ident:
                continue
            if "progress" in message:
                if progress is not None:
                    progress(*message["progress"])
                continue
            if message["ok"]:
                return message["reply"]
            raise JobError(message["error"]["kind"], message["error"]["message"])

    # -- the runner interface ------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    def residency(self) -> dict[str, str]:
        return dict(self._residency)

    def _note(self, report: dict) -> MemoryReport:
        parsed = MemoryReport.from_dict(report)
        self._residency = dict(parsed.residency)
        return parsed

    def load(self) -> MemoryReport:
        with self._lock:
            report = self._note(self._call("load"))
            self._state = "ready"
            return report

    def generate(
        self, request: GenerationRequest, output_dir: str | Path, progress: Progress | None = None
    ) -> GenerationResult:
        with self._lock:
            reply = self._call(
                "generate",
                progress,
                request=request.model_dump(mode="json", exclude_unset=True),  # keeps "seed given" facts
                output_dir=str(output_dir),
            )
            self._state = "ready"
            self._job_load = MemoryReport.from_dict(reply["load"]) if reply["load"] else None
            self._residency = self._call("status")["residency"]
            return GenerationResult.model_validate(reply["result"])

    def take_job_load(self) -> MemoryReport | None:
        report, self._job_load = self._job_load, None
        return report

    def status(self) -> dict:
        with self._lock:
            if not self.alive:
                return {"state": "unloaded", "residency": self.residency(), "memory": None}
            return self._call("status")

    def inject_fault(self, stage: str, kind: str) -> None:
        with self._lock:
            self._call("fault", stage=stage, kind=kind)

    def unload(self, level: str) -> MemoryReport:
        if level not in ("park", "free"):
            raise ValueError(f"unload level must be park or free, got {level!r}")
        with self._lock:
            if level == "park":
                if not self.alive:
                    return MemoryReport("park", MemorySnapshot(), MemorySnapshot(), 0.0, self.residency())
                report = self._note(self._call("unload", level="park"))
                self._state = "parked"
                return report
            return self._stop()

    def _stop(self) -> MemoryReport:
        """End the worker process: the strongest unload (the CUDA context goes with it)."""
        watch = Stopwatch()
        if self.proc is None:
            return MemoryReport("free", MemorySnapshot(), MemorySnapshot(), watch.seconds, self.residency())
        pid = self.proc.pid
        before = MemorySnapshot(pid=pid)
        if self.proc.poll() is None:
            try:
                before = MemorySnapshot(**self._call("status")["memory"])
                self._call("exit")
                self.proc.wait(timeout=EXIT_TIMEOUT_S)
            except (JobError, subprocess.TimeoutExpired):
                self.proc.kill()
        code = self._reap()
        gpu_after = self.source.process_gpu_bytes(pid) if self.source is not None else None
        after = MemorySnapshot(pid=pid, process_gpu_bytes=gpu_after)
        note = f"worker process {pid} {describe_exit(code)}"
        return MemoryReport("free", before, after, watch.seconds, self.residency(), note)

    def close(self) -> None:
        self.unload("free")
