"""``ProcessRunner``: the runner interface, served by a separate worker process.

The server process never touches CUDA; the worker does. ``free`` ends the worker, so the GPU goes
back to zero for this service, CUDA context included. A worker that dies mid-job fails that job
with the reason (exit code or signal) and is replaced by a fresh process.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from loguru import logger

from acestep.errors import JobError
from acestep.lora.catalog import no_adapters
from acestep.memory.gpus import DeviceStatsSource
from acestep.memory.report import MemoryReport, MemorySnapshot, Stopwatch
from acestep.memory.residency import REPORTED, Place
from acestep.request import GenerationRequest
from acestep.result import GenerationResult
from acestep.settings import child_environment
from acestep.settings import current as current_settings
from acestep.settings import value as setting_value
from acestep.worker import messages as wire
from acestep.worker.runner import EngineSpec, Progress

EXIT_TIMEOUT_S = 60.0
START_TIMEOUT_S: float = setting_value(current_settings(), "ACESTEP_WORKER_START_TIMEOUT")
POLL_S = 1.0  # how often a blocked read checks that the worker is still alive


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
        gpu_index: int | None = None,
    ):
        self.spec = spec
        self.source = source
        self.gpu_index = gpu_index  # the source's index of the worker's GPU (device-level figures)
        self.baseline_gpu_used: int | None = None  # the GPU's used bytes before the worker started
        self.env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self._fd: int | None = None  # our end of the answer pipe (raw: select and buffering agree)
        self._buffer = b""
        self._ids = itertools.count(1)
        self._state = "unloaded"
        self._residency = dict.fromkeys(REPORTED, Place.UNLOADED.value)
        self._adapters = no_adapters()
        self._models: dict[str, str] = {}  # the worker's loaded DiTs (ready | parked)
        self.current: str | None = None  # the DiT the worker used last
        self.starts = 0  # how many worker processes this runner has started
        self._job_load: MemoryReport | None = None
        self.last_exit_code: int | None = None
        self._lock = threading.Lock()

    # -- process management -------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        proc = self.proc  # read once: the dispatcher thread may reap it meanwhile
        return proc.pid if proc is not None else None

    @property
    def alive(self) -> bool:
        proc = self.proc
        return proc is not None and proc.poll() is None

    def start(self) -> None:
        """Start a fresh worker process (models load on the first job or ``load``)."""
        self.baseline_gpu_used = self._gpu_used()
        read_fd, write_fd = os.pipe()
        # The worker needs no secret, and its tracebacks never show local variables (loguru's
        # default would print them, request values included).
        env = child_environment(self.env)  # secrets stripped (the registry's secret flag)
        env |= {"PYTHONUNBUFFERED": "1", "LOGURU_DIAGNOSE": "NO"}
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
            # The worker's stdout goes to our stderr (fd 2): our stdout may carry a protocol
            # (MCP over stdio) that a stray print in the worker must not corrupt.
            self.proc = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=2, pass_fds=(write_fd,), env=env, text=True
            )
        finally:
            os.close(write_fd)
        self._fd, self._buffer = read_fd, b""
        self.starts += 1
        self._set_unloaded()
        hello = self._read("while starting", timeout=START_TIMEOUT_S)
        if not isinstance(hello, wire.Ready):
            raise WorkerCrashed(f"the GPU worker did not start: {hello}")
        logger.info(f"GPU worker process {self.proc.pid} started")

    def _gpu_used(self) -> int | None:
        if self.source is None or self.gpu_index is None:
            return None
        for gpu in self.source.gpus():
            if gpu.index == self.gpu_index:
                return gpu.used_bytes
        return None

    def _set_unloaded(self) -> None:
        self._state = "unloaded"
        self._models = {}
        self._residency = dict.fromkeys(REPORTED, Place.UNLOADED.value)
        self._adapters = no_adapters()

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
            self.last_exit_code = code
            try:
                if self.proc.stdin is not None:
                    self.proc.stdin.close()
            except OSError:
                pass
        if self._fd is not None:
            os.close(self._fd)
        self.proc, self._fd, self._buffer = None, None, b""
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

    def _crashed(self, context: str) -> WorkerCrashed:
        pid = self.pid
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # a worker we gave up on must not linger
        code = self._reap()
        return WorkerCrashed(f"the GPU worker process {pid} {describe_exit(code)} {context}")

    def _read(self, context: str, timeout: float | None = None) -> wire.Answer:
        """One message; a dead worker (even one whose pipe a stray child keeps open) or a timeout
        raises :class:`WorkerCrashed`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            if self._fd is None:
                raise self._crashed(context)
            ready, _, _ = select.select([self._fd], [], [], POLL_S)
            if ready:
                chunk = os.read(self._fd, 1 << 16)
                if not chunk:
                    raise self._crashed(context)
                self._buffer += chunk
                continue
            if self.proc is None or self.proc.poll() is not None:
                raise self._crashed(context)
            if deadline is not None and time.monotonic() > deadline:
                raise self._crashed(f"{context} (no answer in {timeout:.0f} s)")
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            return wire.decode(line)
        except wire.MessageError as exc:  # a worker that speaks nonsense is not kept
            raise self._crashed(f"{context} (unreadable answer: {exc})") from None

    def _call(self, command: wire.Command, progress: Progress | None = None, start: bool = True) -> dict:
        """Send one command and wait for its reply; ``start=False`` never starts a worker."""
        if start:
            self._ensure_started()
        elif not self.alive:
            raise WorkerCrashed("the GPU worker process is not running")
        job_ops = (wire.Op.GENERATE, wire.Op.TRAIN)
        context = "during the job" if command.op in job_ops else f"during {command.op}"
        try:
            self.proc.stdin.write(wire.encode(command))
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._crashed(context) from None
        while True:
            message = self._read(context)
            if isinstance(message, wire.Ready) or message.id != command.id:
                continue
            if isinstance(message, wire.Progress):
                if progress is not None:
                    try:
                        if message.detail is not None:
                            progress(message.stage, message.fraction, message.detail)
                        else:
                            progress(message.stage, message.fraction)
                    except BaseException:
                        # The caller gave up on this job (e.g. cancelled it) while the worker runs
                        # it; the worker cannot be interrupted mid-command, so it is ended.
                        self.kill()
                        self._reap()
                        raise
                continue
            if isinstance(message, wire.Done):
                return message.reply
            raise JobError(message.kind, message.message)

    def _id(self) -> int:
        return next(self._ids)

    # -- the runner interface ------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    def residency(self) -> dict[str, str]:
        return dict(self._residency)

    def adapters(self) -> dict:
        return self._adapters

    def models(self) -> dict[str, str]:
        return dict(self._models)

    def _note(self, report: dict) -> MemoryReport:
        parsed = MemoryReport.from_dict(report)
        self._residency = dict(parsed.residency)
        return parsed

    def load(self, model: str | None = None) -> MemoryReport:
        with self._lock:
            try:
                report = self._note(self._call(wire.Load(self._id(), model)))
            finally:
                self._refresh()  # which DiTs are loaded now (one may have been freed)
            self._state = "ready"
            return report

    def generate(
        self,
        request: GenerationRequest,
        output_dir: str | Path,
        progress: Progress | None = None,
        lm_only: bool = False,
        model: str | None = None,
    ) -> GenerationResult:
        with self._lock:
            try:
                command = wire.Generate(
                    self._id(),
                    request=request.model_dump(mode="json", exclude_unset=True),  # keeps "seed given" facts
                    output_dir=str(output_dir),
                    lm_only=lm_only,
                    model=model,
                )
                reply = self._call(command, progress)
            finally:
                self._refresh()  # a failed job may have loaded the model or changed its adapters
            self._job_load = MemoryReport.from_dict(reply["load"]) if reply["load"] else None
            return GenerationResult.model_validate(reply["result"])

    def train(self, request, dataset: str, report, model: str | None = None) -> dict:
        """A training run in the worker process; its progress lines carry the run's details."""
        from acestep.training.progress import TrainingProgress

        def progress(stage: str, fraction: float, detail: dict | None = None) -> None:
            if detail is not None:
                report(TrainingProgress.from_dict(detail))

        with self._lock:
            try:
                command = wire.Train(self._id(), request.model_dump(mode="json"), dataset, model)
                return self._call(command, progress)
            finally:
                self._refresh()  # the worker freed its engines for the run

    def take_job_load(self) -> MemoryReport | None:
        report, self._job_load = self._job_load, None
        return report

    def _refresh(self) -> None:
        """The worker's own state, residency and adapters, after a command that may have changed
        them, whether it succeeded or not. A worker that is gone has been reaped already."""
        if not self.alive:
            return
        try:
            status = self._call(wire.Status(self._id()), start=False)
        except JobError as exc:  # the command's outcome stands; the worker is reaped
            logger.warning(f"the worker's status could not be read after the command: {exc}")
            return
        self._state = status["state"]
        self._residency, self._adapters = status["residency"], status["adapters"]
        self._models, self.current = status.get("models", {}), status.get("model")

    def load_lora(self, names: list[str]) -> MemoryReport:
        with self._lock:
            try:
                return self._note(self._call(wire.LoraLoad(self._id(), list(names))))
            finally:
                self._refresh()

    def unload_lora(self, names: list[str] | None = None) -> MemoryReport:
        with self._lock:
            if not self.alive:  # no worker, no adapters
                return MemoryReport("lora_unload", MemorySnapshot(), MemorySnapshot(), 0.0, self.residency())
            try:
                return self._note(self._call(wire.LoraUnload(self._id(), names), start=False))
            finally:
                self._refresh()

    def status(self) -> dict:
        with self._lock:
            if not self.alive:
                return {"state": "unloaded", "residency": self.residency(), "memory": None}
            return self._call(wire.Status(self._id()))

    def inject_fault(self, stage: str, kind: str) -> None:
        with self._lock:
            self._call(wire.Fault(self._id(), stage, kind))

    def unload(self, level: str) -> MemoryReport:
        if level not in ("park", "free"):
            raise ValueError(f"unload level must be park or free, got {level!r}")
        with self._lock:
            if level == "park":
                if not self.alive:
                    return MemoryReport("park", MemorySnapshot(), MemorySnapshot(), 0.0, self.residency())
                report = self._note(self._call(wire.Unload(self._id(), "park")))
                self._state = "parked"
                self._models = dict.fromkeys(self._models, "parked")
                return report
            return self._stop()

    def _stop(self) -> MemoryReport:
        """End the worker process: the strongest unload (the CUDA context goes with it)."""
        watch = Stopwatch()
        if self.proc is None:
            return MemoryReport("free", MemorySnapshot(), MemorySnapshot(), watch.seconds, self.residency())
        pid = self.proc.pid
        before = MemorySnapshot(pid=pid)
        try:
            memory = self._call(wire.Status(self._id()), start=False)["memory"]
            before = MemorySnapshot(**memory | {"gpu_used_bytes": self._gpu_used()})
            self._call(wire.Exit(self._id()), start=False)
            self.proc.wait(timeout=EXIT_TIMEOUT_S)
        except (JobError, subprocess.TimeoutExpired):
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
        code = self._reap() if self.proc is not None else None
        if code is None:
            code = self.last_exit_code
        gpu_after = self.source.process_gpu_bytes(pid) if self.source is not None else None
        after = MemorySnapshot(pid=pid, process_gpu_bytes=gpu_after, gpu_used_bytes=self._gpu_used())
        note = f"worker process {pid} {describe_exit(code)}"
        if after.gpu_used_bytes is not None and self.baseline_gpu_used is not None:
            note += (
                f"; GPU in use {after.gpu_used_bytes / 2**20:.0f} MiB, "
                f"{self.baseline_gpu_used / 2**20:.0f} MiB before the worker started"
            )
        return MemoryReport("free", before, after, watch.seconds, self.residency(), note)

    def close(self) -> None:
        self.unload("free")
