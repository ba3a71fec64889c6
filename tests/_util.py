"""Helpers shared by the engine tests (imported as a plain module; pytest puts tests/ on sys.path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from acestep import AceStep, GenerationRequest, GenerationResult

# (name as NVML reports it, total GiB, compute capability): the targets' GPUs, simulated.
TARGET_GPUS = {
    "t4": ("Tesla T4", 15, (7, 5)),
    "4090": ("NVIDIA GeForce RTX 4090", 24, (8, 9)),
    "h100": ("NVIDIA H100 80GB HBM3", 80, (9, 0)),
    "gb10": ("NVIDIA GB10", 120, (12, 1)),
}


def generate(engine: AceStep, out: Path, **fields) -> tuple[GenerationResult, np.ndarray]:
    """Run one request; return the result and the audio of every item as [B, channels, samples]."""
    fields.setdefault("audio_format", "wav")
    result = engine.generate(GenerationRequest(**fields), out)
    audio = [sf.read(path, dtype="float32", always_2d=True)[0].T for path in result.audio_paths]
    return result, np.stack(audio)


class TransformerSpy:
    """Records what the DiT receives on every forward (a forward pre-hook on the real module)."""

    def __init__(self, engine: AceStep):
        self.calls: list[dict] = []
        self._handle = engine.components.transformer.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.calls.append({k: v.detach().clone() for k, v in kwargs.items() if hasattr(v, "detach")})

    def close(self) -> None:
        self._handle.remove()

    def __enter__(self) -> TransformerSpy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
