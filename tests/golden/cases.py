"""The golden cases: fixed tiny checkpoints (seed 0), synthetic source audio, fixed seeds.

Stored per (layout, variant) as every 40th sample of the decoded, peak-normalised output.
Tolerance: absolute 2e-4 on samples that peak at 0.891 (-1 dBFS); the runs are float32 on CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from acestep import AceStep, GenerationRequest
from acestep.testing import synthetic_audio

DECIMATE = 40
TOLERANCE = 2e-4
GOLDEN_DIR = Path(__file__).parent
LAYOUTS = ("upstream", "diffusers")
VARIANTS = ("turbo", "base")


def request_for(variant: str, workdir: Path) -> GenerationRequest:
    if variant == "turbo":
        return GenerationRequest(
            task_type="text2music",
            caption="golden piano, warm",
            lyrics="[verse]\nla la la",
            audio_duration=6.0,
            bpm=120,
            key_scale="C major",
            time_signature="4",
            seed=42,
            batch_size=2,
            audio_format="wav",
        )
    source = workdir / "golden_source.wav"
    sf.write(source, synthetic_audio(6.0, seed=1), 48000)
    return GenerationRequest(
        task_type="lego",
        track_name="vocals",
        caption="golden vocals",
        src_audio=str(source),
        seed=42,
        batch_size=2,
        inference_steps=8,
        guidance_scale=7.0,
        shift=3.0,
        audio_format="wav",
    )


def render(engine: AceStep, variant: str, workdir: Path) -> np.ndarray:
    """[items, channels, samples // DECIMATE] float32."""
    result = engine.generate(request_for(variant, workdir), workdir / "out")
    audio = [sf.read(p, dtype="float32", always_2d=True)[0].T[:, ::DECIMATE] for p in result.audio_paths]
    return np.stack(audio)


def golden_path(layout: str, variant: str) -> Path:
    return GOLDEN_DIR / f"{layout}-{variant}.npy"
