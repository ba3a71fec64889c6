"""Stage times from synchronised forward hooks, the same for the stock pipeline and acestep."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections import defaultdict

import torch

# Stage -> the module (attribute path on Components) whose forward calls make it up.
STAGES = {
    "text_encode": "text_encoder",
    "condition": "condition_encoder",
    "audio_encode": "vae.encoder",
    "vae_decode": "vae.decoder",
}


class StageClock:
    def __init__(self, device: torch.device):
        self.device = device
        self.totals: dict[str, float] = defaultdict(float)
        self.steps: list[float] = []

    def reset(self) -> None:
        self.totals.clear()
        self.steps.clear()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def record(self, stage: str, elapsed: float) -> None:
        if stage == "dit":
            self.steps.append(elapsed)
        else:
            self.totals[stage] += elapsed

    @contextlib.contextmanager
    def timed(self, stage: str):
        self.sync()
        started = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.record(stage, time.perf_counter() - started)

    @contextlib.contextmanager
    def watch(self, components, dit_hook: bool = True):
        """Time every forward of the stage modules (and of the DiT, one call per step)."""
        stages = dict(STAGES) | ({"dit": "transformer"} if dit_hook else {})
        handles = []
        for stage, path in stages.items():
            owner, _, child = path.partition(".")
            module = getattr(components, owner)
            module = module.get_submodule(child) if child else module
            started: list[float] = []

            def before(_module, _args, started=started):
                self.sync()
                started.append(time.perf_counter())

            def after(_module, _args, _output, stage=stage, started=started):
                self.sync()
                self.record(stage, time.perf_counter() - started.pop())

            handles.append(module.register_forward_pre_hook(before))
            handles.append(module.register_forward_hook(after))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def summary(self) -> dict[str, float]:
        out = {stage: self.totals.get(stage, 0.0) for stage in (*STAGES, "file_io")}
        if self.steps:
            out |= {
                "dit": sum(self.steps),
                "dit_step_mean": statistics.fmean(self.steps),
                "dit_step_min": min(self.steps),
                "dit_steps": float(len(self.steps)),
            }
        return out


class TimedRunner:
    """Wraps the engine's DiT runner: each call (one denoising step) is timed, graphs included."""

    def __init__(self, runner):
        self.runner = runner
        self.clock: StageClock | None = None

    def __call__(self, **inputs):
        if self.clock is None:
            return self.runner(**inputs)
        with self.clock.timed("dit"):
            return self.runner(**inputs)

    def __getattr__(self, name):
        return getattr(self.runner, name)
