"""The golden cases: fixed tiny checkpoints (seed 0), synthetic source audio, fixed seeds.

Stored per (layout, variant) as every 40th sample of the decoded, peak-normalised output.

The comparison is built to be independent of the CPU's kernels and to catch a change of meaning.
float32 runs on another instruction set (ATen's ``default``/``avx2``/``avx512``, oneDNN's ISA cap,
MKL's CBWR branch, one thread or two) round differently, and 8 guided steps of a random model
amplify that: across every kernel choice forced on one AVX-512 machine the worst item was off by a
relative L2 error of 2.2e-3 and an absolute 3.2e-3 (``python tests/golden/kernel_spread.py``).
Semantic changes move items by 0.09 (the lego window's mask ignored) to 0.49 (turbo's shift
ignored) in the same measure, and ``test_golden.py`` injects three such changes to prove they
fail. The tolerances sit between: about 4.5x the measured spread, 9x below the smallest change.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from acestep import AceStep, GenerationRequest
from acestep.testing import synthetic_audio

DECIMATE = 40
# Per item: ||actual - golden|| / ||golden|| and the largest absolute sample difference.
RELATIVE_TOLERANCE = 1e-2
ABSOLUTE_TOLERANCE = 1.5e-2
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
        # A window and a guidance interval that is not the whole range, so that the lego mask and
        # the interval's direction (patches/0001, 0003) both shape the output; the explicit chunk
        # mask carries the window to the DiT (the turbo case keeps the default, auto).
        repainting_start=1.0,
        repainting_end=5.0,
        chunk_mask_mode="explicit",
        cfg_interval_start=0.4,
        cfg_interval_end=1.0,
        audio_format="wav",
    )


def render(engine: AceStep, variant: str, workdir: Path) -> np.ndarray:
    """[items, channels, samples // DECIMATE] float32."""
    result = engine.generate(request_for(variant, workdir), workdir / "out")
    audio = [sf.read(p, dtype="float32", always_2d=True)[0].T[:, ::DECIMATE] for p in result.audio_paths]
    return np.stack(audio)


def mismatch(actual: np.ndarray, expected: np.ndarray) -> str | None:
    """Why ``actual`` is not the golden ``expected`` (None when it is, within the tolerances)."""
    if actual.shape != expected.shape:
        return f"shape {actual.shape} != golden {expected.shape}"
    for item, (got, want) in enumerate(zip(actual, expected, strict=True)):
        relative = float(np.linalg.norm(got - want) / np.linalg.norm(want))
        absolute = float(np.abs(got - want).max())
        if relative > RELATIVE_TOLERANCE or absolute > ABSOLUTE_TOLERANCE:
            return (
                f"item {item}: relative L2 error {relative:.3g} (limit {RELATIVE_TOLERANCE}), "
                f"max abs {absolute:.3g} (limit {ABSOLUTE_TOLERANCE})"
            )
    return None


def golden_path(layout: str, variant: str) -> Path:
    return GOLDEN_DIR / f"{layout}-{variant}.npy"
