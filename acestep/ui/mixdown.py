"""A lego or extract result heard in context: the stem and its source summed at matched levels,
written next to the stem so the result's player can serve it (numpy and soundfile only).

A preview, not a master: the source is resampled linearly to the stem's rate (the engine already
resampled it to 48 kHz for the job; the UI may not import torch to do it the same way).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

TARGET_RMS = 0.1  # each part is brought to about -20 dBFS before the sum
MAX_GAIN = 10.0  # at most +20 dB: a near-silent stem (outside a lego window) stays quiet
PEAK = 0.99  # the sum is scaled down, never clipped, when it would pass this
MIX_SUFFIX = ".mix.wav"


def mix_path(stem: str | Path) -> Path:
    stem = Path(stem)
    return stem.with_name(stem.stem + MIX_SUFFIX)


def _fit(source: np.ndarray, rate: int, frames: int, channels: int, stem_rate: int) -> np.ndarray:
    """The source at the stem's rate, channel count and length (cut, or padded with silence)."""
    if rate != stem_rate:
        duration = source.shape[0] / rate
        times = np.arange(int(round(duration * stem_rate))) / stem_rate
        known = np.arange(source.shape[0]) / rate
        source = np.stack([np.interp(times, known, source[:, c]) for c in range(source.shape[1])], axis=1)
    if source.shape[1] != channels:
        source = np.repeat(source.mean(axis=1, keepdims=True), channels, axis=1)
    fitted = np.zeros((frames, channels), dtype=np.float64)
    fitted[: min(frames, source.shape[0])] = source[:frames]
    return fitted


def _levelled(audio: np.ndarray) -> np.ndarray:
    rms = float(np.sqrt(np.mean(audio**2))) if audio.size else 0.0
    return audio * (min(TARGET_RMS / rms, MAX_GAIN) if rms > 0 else 0.0)


def mix(stem: np.ndarray, source: np.ndarray) -> np.ndarray:
    """The level-matched sum of two arrays of the same shape, its peak at most ``PEAK``."""
    total = _levelled(stem) + _levelled(source)
    peak = float(np.max(np.abs(total))) if total.size else 0.0
    return total * (PEAK / peak) if peak > PEAK else total


def write_mix(stem_path: str | Path, source_path: str | Path) -> Path | None:
    """Write the preview next to the stem (16-bit WAV) and return its path; None when either file
    cannot be decoded."""
    try:
        stem, stem_rate = sf.read(str(stem_path), dtype="float64", always_2d=True)
        source, rate = sf.read(str(source_path), dtype="float64", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError):
        return None
    fitted = _fit(source, rate, stem.shape[0], stem.shape[1], stem_rate)
    target = mix_path(stem_path)
    sf.write(str(target), mix(stem, fitted), stem_rate, subtype="PCM_16")
    return target
