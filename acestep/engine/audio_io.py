"""Audio in and out: decode, resample to 48 kHz stereo, peak-normalise, write files."""

from __future__ import annotations

import hashlib
import io
import json
import math
import uuid
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from scipy.io import wavfile
from scipy.signal import resample_poly

from acestep.engine import encoders
from acestep.engine.audio_limits import (
    MAX_INPUT_SECONDS,
    MIN_INPUT_SECONDS,
    AudioHeader,
    AudioInputError,
    check_header,
    max_frames,
)
from acestep.engine.disk_full import NoSpaceError, is_no_space

SAMPLE_RATE = 48000
SILENCE_THRESHOLD = 1e-6
SILENT_OUTPUT_LEVEL = 1e-5
BLOCK_FRAMES = 2**16  # per read: 2 MiB at 8 channels, few enough calls for a 600 s file
# soundfile container and subtype per request format (upstream: wav is float, flac 16-bit PCM).
FORMATS = {
    "wav": ("WAV", "FLOAT", "wav"),
    "wav32": ("WAV", "FLOAT", "wav"),
    "flac": ("FLAC", "PCM_16", "flac"),
    "mp3": ("MP3", "MPEG_LAYER_III", "mp3"),
    "opus": ("OGG", "OPUS", "opus"),  # Ogg/Opus, serial fixed (engine/encoders.py)
    "aac": ("ADTS", "AAC", "aac"),  # PyAV's native AAC encoder (engine/encoders.py)
}


def load_audio(
    path: str | Path, max_seconds: float = MAX_INPUT_SECONDS, min_seconds: float = MIN_INPUT_SECONDS
) -> torch.Tensor:
    """Read WAV/FLAC/MP3/OGG as float32 [2, samples] at 48 kHz, clamped to [-1, 1].

    Mono is duplicated, channels beyond two dropped, other rates resampled (upstream's order).
    The header is checked against every input bound first, and the samples are decoded in blocks
    that keep only two channels, so memory is frames x 2 x 4 bytes whatever the file claims.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioInputError(f"audio file not found: {path}")
    name = f"audio file {path.name}"
    try:
        handle = sf.SoundFile(str(path))
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError variants
        raise AudioInputError(f"cannot read {name}: {_reason(exc)}") from exc
    with handle:
        header = AudioHeader(rate=handle.samplerate, channels=handle.channels, frames=handle.frames)
        check_header(name, header, max_seconds, min_seconds)
        data = _decode_two_channels(handle, name, max_frames(header.rate, max_seconds))
    wav = torch.from_numpy(data)
    if header.rate != SAMPLE_RATE:
        wav = resample(wav, header.rate, SAMPLE_RATE)
    return wav.clamp_(-1.0, 1.0).contiguous()  # in place: no second copy of a long input


def _decode_two_channels(handle: sf.SoundFile, name: str, limit: int) -> np.ndarray:
    """[2, frames] float32, filled block by block; mono is duplicated into the second row.

    Sized from the header, grown only if the stream runs longer (MP3 lengths are estimates), and
    refused once it passes ``limit`` frames: a header must not be able to understate the cost.
    """
    out = np.empty((2, min(handle.frames, limit)), dtype=np.float32)
    block = np.empty((BLOCK_FRAMES, handle.channels), dtype=np.float32)
    kept = min(handle.channels, 2)
    filled = 0
    try:
        while True:
            chunk = handle.read(BLOCK_FRAMES, dtype="float32", always_2d=True, out=block)
            n = chunk.shape[0]
            if n == 0:
                break
            if not np.isfinite(chunk).all():
                raise AudioInputError(f"{name} contains NaN or infinite samples")
            if filled + n > out.shape[1]:
                if filled + n > limit:
                    raise AudioInputError(f"{name} decodes to more audio than its header declared")
                grown = np.empty((2, min(limit, max(filled + n, 2 * out.shape[1]))), dtype=np.float32)
                grown[:, :filled] = out[:, :filled]
                out = grown
            out[:kept, filled : filled + n] = chunk[:, :kept].T
            filled += n
    except AudioInputError:
        raise
    except Exception as exc:
        raise AudioInputError(f"cannot decode {name}: {_reason(exc)}") from exc
    if filled == 0:
        raise AudioInputError(f"{name}: the audio is empty")
    if kept == 1:
        out[1, :filled] = out[0, :filled]
    return out if filled == out.shape[1] else np.ascontiguousarray(out[:, :filled])


def _reason(exc: Exception) -> str:
    # libsndfile's reason alone: soundfile's message repeats the server path of the file.
    return getattr(exc, "error_string", None) or str(exc)


def resample(wav: torch.Tensor, rate: int, target: int = SAMPLE_RATE) -> torch.Tensor:
    """Polyphase resampling (scipy, Kaiser-windowed FIR) of [channels, samples] to ``target`` Hz.

    scipy rather than torchaudio: torchaudio's compiled extension must match the installed torch
    build exactly, and a mismatch breaks ``import acestep`` (see patches/0026). One channel at a
    time into the result: the same samples as all at once, with one channel's scratch, not all.
    """
    step = math.gcd(int(rate), int(target))
    up, down = target // step, int(rate) // step
    rows = wav.numpy()
    out: np.ndarray | None = None
    for index, row in enumerate(rows):
        converted = resample_poly(row, up, down)
        if out is None:
            out = np.empty((rows.shape[0], converted.shape[0]), dtype=np.float32)
        out[index] = converted
    return torch.from_numpy(out)


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
    """Write [channels, samples] float audio; returns the path.

    Written to a hidden temporary name and renamed into place, so a failed write (a full disk:
    :class:`NoSpaceError`) leaves neither a partial file nor a clobbered earlier result.
    """
    container, subtype, ext = FORMATS[audio_format]
    directory = Path(directory)
    path = directory / f"{stem}.{ext}"
    partial = directory / f".{stem}.{uuid.uuid4().hex}.part"
    data = np.ascontiguousarray(wav.detach().float().cpu().numpy().T)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if (container, subtype) == ("WAV", "FLOAT"):
            # libsndfile stamps float WAVs with the time of writing (the PEAK chunk), so one request
            # and seed would give other bytes a second later; scipy writes the same samples without it.
            wavfile.write(str(partial), SAMPLE_RATE, data)
        elif audio_format in ("opus", "aac"):
            encode = encoders.encode_opus if audio_format == "opus" else encoders.encode_aac
            partial.write_bytes(encode(data, SAMPLE_RATE))
        else:
            # Encoded in memory (at most half the float samples): libsndfile reports a full disk
            # only as "System error.", Python's own write names ENOSPC.
            with io.BytesIO() as buffer:
                sf.write(buffer, data, SAMPLE_RATE, format=container, subtype=subtype)
                partial.write_bytes(buffer.getbuffer())
        partial.replace(path)
    except BaseException as exc:
        partial.unlink(missing_ok=True)
        if is_no_space(exc):
            raise NoSpaceError(directory) from exc
        raise
    return path


def frames_for_seconds(seconds: float) -> int:
    """Upstream's latent length for a duration: int(round(d, 1) * 48000) // 1920."""
    return int(round(seconds, 1) * SAMPLE_RATE) // 1920


def seconds_to_frame(seconds: float) -> int:
    return int(math.floor(seconds * SAMPLE_RATE / 1920))
