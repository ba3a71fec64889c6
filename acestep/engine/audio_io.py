"""Audio in and out: decode, resample to 48 kHz stereo, peak-normalise, write files."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from scipy.io import wavfile
from scipy.signal import resample_poly

SAMPLE_RATE = 48000
MAX_INPUT_SECONDS = 600.0
MIN_INPUT_SECONDS = 1.0  # shorter inputs are too short for the VAE's receptive field
SILENCE_THRESHOLD = 1e-6
SILENT_OUTPUT_LEVEL = 1e-5
# soundfile container and subtype per request format (upstream: wav is float, flac 16-bit PCM).
FORMATS = {
    "wav": ("WAV", "FLOAT", "wav"),
    "wav32": ("WAV", "FLOAT", "wav"),
    "flac": ("FLAC", "PCM_16", "flac"),
    "mp3": ("MP3", "MPEG_LAYER_III", "mp3"),
}


class AudioInputError(ValueError):
    """An input audio file cannot be used; the message says why."""


def load_audio(path: str | Path, max_seconds: float = MAX_INPUT_SECONDS) -> torch.Tensor:
    """Read WAV/FLAC/MP3/OGG as float32 [2, samples] at 48 kHz, clamped to [-1, 1].

    Mono is duplicated, channels beyond two dropped, other rates resampled (upstream's order).
    """
    path = Path(path)
    if not path.is_file():
        raise AudioInputError(f"audio file not found: {path}")
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError variants
        raise AudioInputError(f"cannot read audio file {path.name}: {exc}") from exc
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioInputError(f"audio file {path.name} is empty")
    seconds = info.frames / info.samplerate
    if seconds < MIN_INPUT_SECONDS:
        raise AudioInputError(
            f"audio file {path.name} is {seconds:.3f} s long; at least {MIN_INPUT_SECONDS:.0f} s is needed"
        )
    if seconds > max_seconds:
        raise AudioInputError(
            f"audio file {path.name} is {seconds:.1f} s long; the limit is {max_seconds:.0f} s"
        )
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioInputError(f"cannot decode audio file {path.name}: {exc}") from exc
    if data.shape[0] == 0:
        raise AudioInputError(f"audio file {path.name} is empty")
    if not np.isfinite(data).all():
        raise AudioInputError(f"audio file {path.name} contains NaN or infinite samples")
    wav = torch.from_numpy(np.ascontiguousarray(data.T))
    if wav.shape[0] == 1:
        wav = wav.repeat(2, 1)
    wav = wav[:2]
    if rate != SAMPLE_RATE:
        wav = resample(wav, rate, SAMPLE_RATE)
    return wav.clamp(-1.0, 1.0).contiguous()


def resample(wav: torch.Tensor, rate: int, target: int = SAMPLE_RATE) -> torch.Tensor:
    """Polyphase resampling (scipy, Kaiser-windowed FIR) of [channels, samples] to ``target`` Hz.

    scipy rather than torchaudio: torchaudio's compiled extension must match the installed torch
    build exactly, and a mismatch breaks ``import acestep`` (see patches/0026).
    """
    step = math.gcd(int(rate), int(target))
    out = resample_poly(wav.numpy(), target // step, int(rate) // step, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


def is_silent(wav: torch.Tensor) -> bool:
    return bool(wav.abs().max() < SILENCE_THRESHOLD)


def anti_clip(batch: torch.Tensor) -> torch.Tensor:
    """If any item peaks above 1, divide every item by max(its peak, 1) (upstream's rule)."""
    peaks = batch.abs().amax(dim=tuple(range(1, batch.dim())), keepdim=True)
    if bool((peaks > 1.0).any()):
        batch = batch / peaks.clamp(min=1.0)
    return batch


def peak_normalize(wav: torch.Tensor, target_db: float = -1.0) -> torch.Tensor:
    """Scale to a peak of ``target_db`` dBFS; near-silent audio is left alone."""
    peak = float(wav.abs().max())
    if peak < SILENCE_THRESHOLD:
        return wav
    return wav * (10.0 ** (target_db / 20.0) / peak)


def output_is_silent(wav: torch.Tensor) -> bool:
    rms = float(wav.float().pow(2).mean().sqrt())
    return rms <= SILENT_OUTPUT_LEVEL and float(wav.abs().max()) <= SILENT_OUTPUT_LEVEL


def file_stem(params: dict) -> str:
    """Upstream's naming: the first 32 hex digits of SHA-256 of the item parameters, as a UUID."""
    digest = hashlib.sha256(
        json.dumps(params, sort_keys=True, ensure_ascii=False, default=str).encode()
    ).hexdigest()
    h = digest[:32]
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def save_audio(wav: torch.Tensor, directory: str | Path, stem: str, audio_format: str) -> Path:
    """Write [channels, samples] float audio; returns the path."""
    container, subtype, ext = FORMATS[audio_format]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}.{ext}"
    data = np.ascontiguousarray(wav.detach().float().cpu().numpy().T)
    if (container, subtype) == ("WAV", "FLOAT"):
        # libsndfile stamps float WAVs with the time of writing (the PEAK chunk), so one request
        # and seed would give other bytes a second later; scipy writes the same samples without it.
        wavfile.write(str(path), SAMPLE_RATE, data)
    else:
        sf.write(str(path), data, SAMPLE_RATE, format=container, subtype=subtype)
    return path


def frames_for_seconds(seconds: float) -> int:
    """Upstream's latent length for a duration: int(round(d, 1) * 48000) // 1920."""
    return int(round(seconds, 1) * SAMPLE_RATE) // 1920


def seconds_to_frame(seconds: float) -> int:
    return int(math.floor(seconds * SAMPLE_RATE / 1920))
