"""``InProcessRunner``: one engine in this process, loaded on demand, parked or freed on request.

This is what the GPU worker process runs, and what the CLI and tests use directly. It owns the
engine's lifecycle (unloaded -> ready <-> parked) and turns a CUDA out-of-memory error into a
failed job that has already given its memory back.
"""

from __future__ import annotations

import os
import threading
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from acestep.lora.catalog import no_adapters
from acestep.memory.gpus import DeviceStatsSource
from acestep.memory.report import MemoryReport, Stopwatch, release_cached, reset_peak, snapshot
from acestep.memory.residency import REPORTED, Place
from acestep.request import GenerationRequest
from acestep.result import GenerationResult
from acestep.worker.classify import classify
from acestep.worker.classify import oom_advice as oom_advice  # its old address

Progress = Callable[[str, float], None]
FAULT_KINDS = ("oom", "crash", "error")


@dataclass(frozen=True)
class EngineSpec:
    """What a runner loads; plain data so it can cross into the worker process as JSON."""

    checkpoint: str
    dit: str | None = None
    device: str = "auto"
    dtype: str | None = None
    lm: str | None = None  # LM folder (path or name); None: ACESTEP_LM_MODEL_PATH, else the first found
    max_dits: int = 1  # DiTs loaded at once (the memory manager's ``max_loaded_dits``)

    def as_dict(self) -> dict:
        return asdict(self)


class Runner(Protocol):
    """What the dispatcher drives: ``InProcessRunner`` here, ``ProcessRunner`` over a worker process.
    Calls never overlap (the dispatcher serialises them)."""

    @property
    def pid(self) -> int | None: ...

    @property
    def state(self) -> str: ...  # unloaded | ready | parked

    @property
    def alive(self) -> bool: ...  # a worker process of its own is running (holds a GPU context)

    def residency(self) -> dict[str, str]: ...

    def adapters(self) -> dict: ...

    def load(self, model: str | None = None) -> MemoryReport: ...

    def models(self) -> dict[str, str]: ...  # loaded DiT -> ready | parked

    def unload(self, level: str) -> MemoryReport: ...

    def load_lora(self, names: list[str]) -> MemoryReport: ...

    def unload_lora(self, names: list[str] | None = None) -> MemoryReport: ...

    def generate(
        self,
        request: GenerationRequest,
        output_dir: str | Path,
        progress: Progress | None = None,
        lm_only: bool = False,
        model: str | None = None,
    ) -> GenerationResult: ...

    def take_job_load(self) -> MemoryReport | None: ...

    def train(self, request, dataset: str, report, model: str | None = None) -> dict: ...

    def restart(self) -> None: ...  # after a crash: a fresh worker (a no-op where there is none)


def _carry_lm(lm, engine) -> None:
    """Keep a freed engine's loaded LM for the next DiT when it is the same folder: a DiT switch
    need not reload the LM."""
    if lm is None or lm.model is None or lm.folder != engine.lm.folder:
        return
    engine.lm = lm
    engine.residency.attach("lm", lm.model.model)


def _hand_lm(engines, target) -> None:
    """One loaded LM per worker: the engine about to run takes a loaded LM of the same folder from
    another loaded DiT's engine, so several DiTs never hold several copies of it."""
    if target.lm.model is not None:
        return
    for other in engines:
        if other is not target and other.lm.model is not None and other.lm.folder == target.lm.folder:
            other.residency.detach("lm")
            target.lm, other.lm = other.lm, target.lm  # the other keeps an unloaded stage
            target.residency.attach("lm", target.lm.model.model)
            return


class InProcessRunner:
    """Loads ``spec``'s DiT on first use, and any other DiT of its checkpoints root a job or a load
    names (``model``). At most ``spec.max_dits`` stay loaded: the memory manager's ``dits_to_free``
    picks the least recently used to free first, and a freed DiT's loaded LM moves to the next one.
    Calls must not overlap (the dispatcher serialises them)."""

    def __init__(
        self,
        spec: EngineSpec,
        source: DeviceStatsSource | None = None,
        limits=None,
        plan=None,
    ):
        self.spec = spec
        self.source = source
        self.limits = limits
        self.plan = plan
        self._engines: OrderedDict[str, object] = OrderedDict()  # by DiT name, least recent first
        self._parked: set[str] = set()
        self.current: str | None = None  # the DiT the last job or load used
        self._fault: tuple[str, str] | None = None
        self._job_load: MemoryReport | None = None  # the load or wake a job caused, if any
        self._lock = threading.Lock()  # guards against misuse: overlapping calls are a bug

    @property
    def pid(self) -> int:
        return os.getpid()

    @property
    def alive(self) -> bool:
        return False  # no worker process of its own: idle unloads follow the engine's state alone

    def restart(self) -> None:
        """Nothing to replace: a crash here ends this process."""

    @property
    def engine(self):
        """The engine of the DiT in use (None while it is not loaded)."""
        return self._engines.get(self.current) if self.current is not None else None

    @property
    def parked(self) -> bool:
        return self.current in self._parked

    @property
    def state(self) -> str:
        if self.engine is None:
            return "unloaded"
        return "parked" if self.parked else "ready"

    def models(self) -> dict[str, str]:
        """Each loaded DiT and whether it is ``ready`` or ``parked`` (least recently used first)."""
        return {name: "parked" if name in self._parked else "ready" for name in self._engines}

    def residency(self) -> dict[str, str]:
        if self.engine is None:
            return dict.fromkeys(REPORTED, Place.UNLOADED.value)
        return self.engine.placement()

    def adapters(self) -> dict:
        """The LoRA adapters in the DiT (none while the engine is not loaded)."""
        if self.engine is None:
            return no_adapters()
        return self.engine.adapters.status()

    def load(self, model: str | None = None) -> MemoryReport:
        """Load from disk (unloaded) or wake (parked) ``model`` (default: the DiT in use, else the
        spec's); a ready engine is left as it is."""
        with self._lock:
            return self._load(model)

    def _default_dit(self) -> str:
        if self.spec.dit:
            return self.spec.dit
        from acestep.checkpoints import resolve

        return resolve(self.spec.checkpoint).dit_name

    def _checkpoint_for(self, name: str) -> str:
        """The spec's checkpoint for its own DiT; its root for another DiT folder."""
        from acestep.checkpoints import resolve

        paths = resolve(self.spec.checkpoint, self.spec.dit)
        return self.spec.checkpoint if name == paths.dit_name else str(paths.root)

    def _load(self, model: str | None = None) -> MemoryReport:
        before, watch = snapshot(self.source), Stopwatch()
        name = model or self.current or self._default_dit()
        note = ""
        if name not in self._engines:
            from acestep.engine.engine import AceStep
            from acestep.memory.manager import dits_to_free

            freed = dits_to_free(list(self._engines), name, self.spec.max_dits)
            lm = None
            for old in freed:  # the manager's decision: least recently used first
                engine = self._engines.pop(old)
                self._parked.discard(old)
                lm = lm or engine.lm
                del engine
            if freed:
                release_cached()
                note = f"freed {', '.join(freed)} (at most {self.spec.max_dits} DiT loaded at once)"
            engine = AceStep.from_pretrained(
                self._checkpoint_for(name),
                dit=name,
                device=self.spec.device,
                dtype=self.spec.dtype,
                limits=self.limits,
                plan=self.plan,
                lm=self.spec.lm,
            )
            _carry_lm(lm, engine)
            self._engines[name] = engine
            action = "load"
        elif name in self._parked:
            self._engines[name].wake()
            self._parked.discard(name)
            action = "wake"
        else:
            action = "none"
        _hand_lm([e for n, e in self._engines.items() if n != name], self._engines[name])
        self._engines.move_to_end(name)
        self.current = name
        note = f"model {name}" + (f"; {note}" if note else "")
        return MemoryReport(action, before, snapshot(self.source), watch.seconds, self.residency(), note)

    def unload(self, level: str) -> MemoryReport:
        """``park``: weights to CPU RAM; ``free``: drop the weights and return every cached byte.
        Every loaded DiT goes."""
        if level not in ("park", "free"):
            raise ValueError(f"unload level must be park or free, got {level!r}")
        with self._lock:
            before, watch = snapshot(self.source), Stopwatch()
            if level == "park":
                for name, engine in self._engines.items():
                    if name not in self._parked:
                        engine.park()
                        self._parked.add(name)
            else:
                self._engines.clear()
                self._parked.clear()
            release_cached()
            return MemoryReport(level, before, snapshot(self.source), watch.seconds, self.residency())

    def load_lora(self, names: list[str]) -> MemoryReport:
        """Load adapters into the DiT, not activating them. A parked DiT takes them in CPU RAM
        (they move with it); with no model loaded they are only checked, and load with the model
        at the next job that names them: a LoRA load never loads or wakes the model by itself."""
        with self._lock:
            before, watch = snapshot(self.source), Stopwatch()
            if self.engine is None:
                from acestep.checkpoints import resolve
                from acestep.lora.catalog import find, lora_dir

                find(lora_dir(), list(names), resolve(self.spec.checkpoint, self.spec.dit).variant.tag)
                note = "checked; it loads with the model at the next job that names it"
            else:
                new = self.engine.adapters.load(list(names))
                note = f"loaded {', '.join(new)}" if new else "already loaded"
            after = snapshot(self.source)
            return MemoryReport("lora_load", before, after, watch.seconds, self.residency(), note)

    def unload_lora(self, names: list[str] | None = None) -> MemoryReport:
        """Remove adapters (all by default) from the DiT: exactly the weights loaded from disk again."""
        with self._lock:
            before, watch = snapshot(self.source), Stopwatch()
            removed = self.engine.adapters.unload(names) if self.engine is not None else []
            release_cached()
            note = f"removed {', '.join(removed)}" if removed else "no adapter was loaded"
            after = snapshot(self.source)
            return MemoryReport("lora_unload", before, after, watch.seconds, self.residency(), note)

    def inject_fault(self, stage: str, kind: str) -> None:
        """Test hook: the next job fails at its first progress report of ``stage``.

        ``oom`` raises a CUDA out-of-memory error there (with the job's tensors alive, as a real
        one would), ``crash`` ends the process at once, ``error`` raises a plain RuntimeError.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}, got {kind!r}")
        self._fault = (stage, kind)

    def generate(
        self,
        request: GenerationRequest,
        output_dir: str | Path,
        progress: Progress | None = None,
        lm_only: bool = False,
        model: str | None = None,
    ) -> GenerationResult:
        """Run ``request`` on the DiT ``model`` (default: the one in use), loading it first."""
        with self._lock:
            try:
                loaded = self._load(model)
                self._job_load = loaded if loaded.action != "none" else None
                reset_peak()
                return self.engine.generate(request, output_dir, self._with_fault(progress), lm_only=lm_only)
            except Exception as exc:
                error = classify(exc, self.engine.limits if self.engine is not None else self.limits)
                if error.kind == "internal":
                    traceback.print_exception(exc)
                # The traceback's frames hold the job's tensors: clear them, and raise the job's
                # error outside this block so it does not chain (and keep alive) the original.
                traceback.clear_frames(exc.__traceback__)
            if error.kind == "oom":
                self._recover()
            raise error

    def train(self, request, dataset: str, report, model: str | None = None) -> dict:
        """A training run on ``model`` (default: the DiT in use): every engine is freed first, so
        the trainer has the GPU alone (``worker/training_run.py``)."""
        from acestep.worker.training_run import run_training

        with self._lock:
            name = model or self.current or self._default_dit()
            self._engines.clear()
            self._parked.clear()
            release_cached()
            try:
                return run_training(
                    self._checkpoint_for(name),
                    name,
                    self.spec.device,
                    self.spec.dtype,
                    request,
                    dataset,
                    report,
                )
            except Exception as exc:
                error = classify(exc, self.limits)
                if error.kind == "internal":
                    traceback.print_exception(exc)
                traceback.clear_frames(exc.__traceback__)
            finally:
                release_cached()
            raise error

    def take_job_load(self) -> MemoryReport | None:
        """The load or wake the last job needed (once), so implicit loads are measured too."""
        report, self._job_load = self._job_load, None
        return report

    def _recover(self) -> None:
        """After an OOM: back to the plan's resting placement, and every cached block returned."""
        if self.engine is not None:
            self.engine.wake()
        release_cached()

    def _with_fault(self, progress: Progress | None) -> Progress:
        report = progress or (lambda stage, fraction: None)
        fault, self._fault = self._fault, None
        if fault is None:
            return report

        def check(stage: str, fraction: float) -> None:
            nonlocal fault
            if fault is not None and stage == fault[0]:
                kind, fault = fault[1], None
                if kind == "crash":
                    os._exit(70)
                if kind == "oom":
                    import torch

                    raise torch.OutOfMemoryError(f"CUDA out of memory (injected at {stage})")
                raise RuntimeError(f"injected failure at {stage}")
            report(stage, fraction)

        return check

    def close(self) -> None:
        self.unload("free")
