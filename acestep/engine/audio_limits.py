"""What an input audio file may be: length, sample rate, channels and decoded size.

Declared once, torch-free, so the API checks an upload's header with the same numbers the worker
applies again before decoding. A compressed file is small on the wire but decodes to
frames x channels samples; these bounds keep that product (the worker's memory) in check.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from acestep.settings import current as current_settings
from acestep.settings import value as setting_value

MAX_INPUT_SECONDS = 600.0
MIN_INPUT_SECONDS = 1.0  # shorter inputs are too short for the VAE's receptive field
# Lego and repaint pad a source with silence up to ``repainting_end`` (upstream's outpainting), so a
# source as short as this may come with a ``repainting_end`` of MIN_INPUT_SECONDS or more.
MIN_PADDED_SOURCE_SECONDS = 0.05
PADDED_TASKS = frozenset({"lego", "repaint"})
MAX_INPUT_RATE = 192_000  # the highest rate studio files use; 384 kHz exists only to inflate files
MAX_INPUT_CHANNELS = 8  # 7.1; only the first two are kept
KEPT_CHANNELS = 2
SAMPLE_BYTES = 4  # float32
MIB = 2**20
MAX_DECODED_ENV = "ACESTEP_MAX_DECODED_MB"
# Two float32 channels at the file's own rate: every 600 s file up to 96 kHz fits (440 MiB),
# 192 kHz up to 349 s. Past this a single upload costs the worker more than the model's own
# working set on a small machine.
DEFAULT_MAX_DECODED_MB: int = setting_value({}, MAX_DECODED_ENV)  # 512, in acestep/setting_table.py


class AudioInputError(ValueError):
    """An input audio file cannot be used; the message says why."""


class UnreadableAudioError(AudioInputError):
    """Not audio that libsndfile can open (a 415 where other input errors are 400s)."""


@dataclass(frozen=True)
class AudioHeader:
    """What a file's header claims: frames per channel, frames per second, channels."""

    rate: int
    channels: int
    frames: int


@functools.cache
def max_decoded_bytes() -> int:
    """``ACESTEP_MAX_DECODED_MB`` (whole MiB, default 512) in bytes, read once per process."""
    return setting_value(current_settings(), MAX_DECODED_ENV) * MIB


def decoded_bytes(frames: int) -> int:
    """What decoding ``frames`` holds in memory: the kept channels as float32 (mono is duplicated)."""
    return frames * KEPT_CHANNELS * SAMPLE_BYTES


def max_frames(rate: int, max_seconds: float = MAX_INPUT_SECONDS) -> int:
    """The most frames a file at ``rate`` may decode to; a decoder stops past it, whatever the
    header said (a header may lie about its length)."""
    return min(int(max_seconds * rate), max_decoded_bytes() // (KEPT_CHANNELS * SAMPLE_BYTES))


def shortest_source(task_type: str, repainting_end: float) -> float:
    """The shortest source a job may read: MIN_INPUT_SECONDS, or MIN_PADDED_SOURCE_SECONDS for a
    lego or repaint whose ``repainting_end`` pads it to at least MIN_INPUT_SECONDS (docs/tasks.md)."""
    if task_type in PADDED_TASKS and repainting_end >= MIN_INPUT_SECONDS:
        return MIN_PADDED_SOURCE_SECONDS
    return MIN_INPUT_SECONDS


def check_header(
    name: str,
    header: AudioHeader,
    max_seconds: float = MAX_INPUT_SECONDS,
    min_seconds: float = MIN_INPUT_SECONDS,
) -> float:
    """The file's length in seconds, if its header is within every bound; AudioInputError naming
    the bound (and its setting) otherwise. ``name`` starts each message (a field or file name)."""
    if header.rate > MAX_INPUT_RATE:
        raise AudioInputError(
            f"{name}: the sample rate is {header.rate} Hz; the limit is {MAX_INPUT_RATE} Hz"
        )
    if header.channels > MAX_INPUT_CHANNELS:
        raise AudioInputError(
            f"{name}: the audio has {header.channels} channels; the limit is {MAX_INPUT_CHANNELS}"
        )
    if header.frames <= 0 or header.rate <= 0 or header.channels <= 0:
        raise AudioInputError(f"{name}: the audio is empty")
    seconds = header.frames / header.rate
    if seconds < min_seconds:
        short = f"{name}: the audio is {seconds:.3f} s long"
        raise AudioInputError(f"{short}; at least {min_seconds:g} s is needed")
    if seconds > max_seconds:
        raise AudioInputError(f"{name}: the audio is {seconds:.1f} s long; the limit is {max_seconds:.0f} s")
    size, limit = decoded_bytes(header.frames), max_decoded_bytes()
    if size > limit:
        raise AudioInputError(
            f"{name}: the audio decodes to {size / MIB:.1f} MB ({seconds:.1f} s at {header.rate} Hz, "
            f"{KEPT_CHANNELS} channels of float32); the limit is {limit // MIB} MB ({MAX_DECODED_ENV})"
        )
    return seconds
