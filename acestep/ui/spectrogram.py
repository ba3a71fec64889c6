"""A small log-magnitude spectrogram of a result, drawn beside its player.

numpy and soundfile only (the UI never imports torch): one FFT window read at each of ``WIDTH``
evenly spaced places in the file, so a 10-minute song costs as little as a 2-second one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

WIDTH, HEIGHT = 512, 128  # pixels: time across, frequency up
WINDOW = 2048  # samples per column's FFT (43 ms at 48 kHz)
LOWEST_HZ = 30.0  # the bottom row; rows are spaced evenly in log frequency up to Nyquist
RANGE_DB = 80.0  # the quietest level drawn, below the loudest
# The loudest level is taken as at least this, so near-silence is drawn dark, not stretched to
# full brightness (a full-scale tone peaks near +54 dB in a WINDOW-sample Hann FFT).
QUIETEST_TOP_DB = -20.0
# A dark-to-bright colour ramp (RGB at evenly spaced levels).
RAMP = np.array(
    [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21], [250, 193, 39],
     [252, 255, 164]],
    dtype=np.float64,
)  # fmt: skip


def columns(path: str | Path) -> tuple[np.ndarray, int]:
    """Mono windows of ``WINDOW`` samples at ``WIDTH`` evenly spaced places, and the sample rate."""
    with sf.SoundFile(str(path)) as audio:
        rate, frames = audio.samplerate, audio.frames
        starts = np.linspace(0, max(frames - WINDOW, 0), WIDTH).astype(np.int64)
        out = np.zeros((WIDTH, WINDOW), dtype=np.float32)
        for column, start in enumerate(starts):
            audio.seek(int(start))
            block = audio.read(WINDOW, dtype="float32", always_2d=True).mean(axis=1)
            out[column, : block.shape[0]] = block
    return out, rate


def magnitudes_db(windows: np.ndarray, rate: int) -> np.ndarray:
    """(HEIGHT, WIDTH) levels in dB, low frequencies in the last row (the image's bottom)."""
    spectrum = np.abs(np.fft.rfft(windows * np.hanning(WINDOW), axis=1))  # (WIDTH, WINDOW/2 + 1)
    freqs = np.fft.rfftfreq(WINDOW, 1.0 / rate)
    edges = np.geomspace(LOWEST_HZ, rate / 2, HEIGHT + 1)
    rows = np.clip(np.searchsorted(edges, freqs) - 1, 0, HEIGHT - 1)
    bands = np.zeros((WIDTH, HEIGHT))
    np.maximum.at(bands, (slice(None), rows), spectrum)  # each row: its loudest bin
    # A row narrower than one FFT bin takes the nearest bin's level instead of staying empty.
    empty = ~np.isin(np.arange(HEIGHT), rows[freqs >= LOWEST_HZ])
    centres = np.sqrt(edges[:-1] * edges[1:])
    nearest = np.clip(np.searchsorted(freqs, centres[empty]), 0, freqs.size - 1)
    bands[:, empty] = spectrum[:, nearest]
    return (20 * np.log10(bands + 1e-9)).T[::-1]


def image(path: str | Path) -> np.ndarray | None:
    """An RGB ``uint8`` (HEIGHT, WIDTH, 3) picture of the file; None if it cannot be decoded
    (soundfile reads WAV, FLAC, MP3 and Ogg, not AAC)."""
    try:
        windows, rate = columns(path)
    except (sf.LibsndfileError, RuntimeError, OSError):
        return None
    levels = magnitudes_db(windows, rate)
    top = max(float(levels.max()), QUIETEST_TOP_DB)
    scaled = np.clip((levels - (top - RANGE_DB)) / RANGE_DB, 0.0, 1.0)
    stops = np.linspace(0.0, 1.0, len(RAMP))
    rgb = np.stack([np.interp(scaled, stops, RAMP[:, channel]) for channel in range(3)], axis=-1)
    return rgb.astype(np.uint8)
