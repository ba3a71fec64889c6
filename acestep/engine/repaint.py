"""Keeping the source outside a repaint window: per-step injection, the latent boundary blend and
the waveform splice after decoding (docs/tasks.md, "repaint").

``repaint_mode`` and ``repaint_strength`` decide three numbers (upstream's table):

| mode | injection ratio | latent crossfade (frames) | waveform crossfade (s) |
|---|---|---|---|
| aggressive | 0 | 0 | 0 (and no splice) |
| conservative | 1 | 25 | 0.05 |
| balanced | 1 - s | round(25 (1 - s)) | 0.05 (1 - s) |

with ``s`` = strength clamped to [0, 1]. Masks use True = generate, False = keep the source.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from acestep.engine.audio_io import SAMPLE_RATE
from acestep.tasks import LATENT_FRAMES_PER_SECOND

CONSERVATIVE_CROSSFADE_FRAMES = LATENT_FRAMES_PER_SECOND  # 1 s of latents
CONSERVATIVE_WAV_CROSSFADE_S = 0.05


@dataclass(frozen=True)
class RepaintSettings:
    injection_ratio: float  # share of the steps after which the source is re-imposed outside
    latent_crossfade_frames: int  # width of each latent ramp just outside the window
    wav_crossfade_s: float  # width of each waveform ramp just outside the window
    splice: bool = True  # whether the decoded audio is spliced with the source (not aggressive)


def repaint_settings(mode: str, strength: float) -> RepaintSettings:
    """The numbers a repaint mode stands for; an unknown mode acts as balanced (as upstream's
    handler; the request refuses unknown modes before this)."""
    strength = max(0.0, min(1.0, float(strength)))
    if mode == "aggressive":
        return RepaintSettings(0.0, 0, 0.0, splice=False)
    if mode == "conservative":
        return RepaintSettings(1.0, CONSERVATIVE_CROSSFADE_FRAMES, CONSERVATIVE_WAV_CROSSFADE_S)
    keep = 1.0 - strength
    # round() is Python's (half to even): strength 0.5 gives 12 frames, as upstream.
    frames = round(CONSERVATIVE_CROSSFADE_FRAMES * keep)
    return RepaintSettings(keep, frames, CONSERVATIVE_WAV_CROSSFADE_S * keep)


def settings_for_request(request) -> RepaintSettings:
    """A request's repaint settings. Its ``repaint_latent_crossfade_frames`` and
    ``repaint_wav_crossfade_sec`` are accepted and unused, as upstream (a note says so)."""
    return repaint_settings(request.repaint_mode, request.repaint_strength)


def injection_steps(ratio: float, steps: int) -> int:
    """How many of the ``steps`` actually run (after any cover-noise truncation) re-impose the
    source: steps ``0 .. n-1`` inject after their update. Python's round, as upstream."""
    return round(ratio * steps)


def inject_source(
    x: torch.Tensor, t_next: float, noise: torch.Tensor, clean: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Outside the window, replace ``x`` [B, F, C] by the source noised to ``t_next`` (the
    timestep after this step): ``t_next * noise + (1 - t_next) * clean``. ``noise`` is the
    sampling's initial noise (the same tensor every step), ``clean`` the unsilenced source latents
    [1 or B, F, C], ``mask`` [1 or B, F] bool with True = generate (kept as is)."""
    noised = t_next * noise + (1.0 - t_next) * clean
    keep = mask.to(torch.bool).unsqueeze(-1)
    return torch.where(keep, x, noised)


def _edge_ramps(length: int, start: int, end: int, width: int, device=None) -> torch.Tensor:
    """Float32 [length]: 1 on [start, end), 0 elsewhere, and linear ramps of up to ``width`` just
    outside each edge whose end points (0 and 1) are left out, so no ramp value is 0 or 1."""
    gain = torch.zeros(length, dtype=torch.float32, device=device)
    gain[start:end] = 1.0
    if width <= 0:
        return gain
    left = max(start - width, 0)
    if start > left:
        gain[left:start] = torch.linspace(0.0, 1.0, start - left + 2, device=device)[1:-1]
    right = min(end + width, length)
    if right > end:
        gain[end:right] = torch.linspace(1.0, 0.0, right - end + 2, device=device)[1:-1]
    return gain


def soft_mask(mask: torch.Tensor, crossfade_frames: int) -> torch.Tensor:
    """Float32 [B, F] from a bool [B, F] window mask: ramps around each row's window (from its first
    to its last True frame); rows that are all True or all False are kept as they are."""
    soft = mask.to(torch.float32).clone()
    if crossfade_frames <= 0:
        return soft
    for row in range(mask.shape[0]):
        where = torch.nonzero(mask[row], as_tuple=False).flatten()
        if where.numel() in (0, mask.shape[1]):
            continue
        start, end = int(where[0]), int(where[-1]) + 1
        soft[row] = _edge_ramps(mask.shape[1], start, end, crossfade_frames, mask.device)
    return soft


def blend_boundaries(
    latents: torch.Tensor, clean: torch.Tensor, mask: torch.Tensor, crossfade_frames: int
) -> torch.Tensor:
    """After sampling: ``m * latents + (1 - m) * clean`` with the soft mask of ``mask``, so the
    window is untouched, the source is exact outside the ramps, and each ramp (``crossfade_frames``
    wide, just outside the window) moves linearly between them. No blend when the width is 0.
    As upstream, a blended result is float32 (the mask's dtype wins)."""
    if crossfade_frames <= 0:
        return latents
    gain = soft_mask(mask, crossfade_frames).unsqueeze(-1)
    return gain * latents + (1.0 - gain) * clean


def splice_waveform(
    audio: torch.Tensor,
    source_wav: torch.Tensor,
    window_samples: tuple[int, int],
    crossfade_s: float,
    sample_rate: int = SAMPLE_RATE,
) -> torch.Tensor:
    """After decoding (and after the anti-clip division): outside the window the audio
    [B, channels, S] becomes the (outpaint-padded) source waveform [channels, S'] (or [B, ...]),
    with linear ramps of ``int(crossfade_s * rate)`` samples just outside the window. Only the
    first ``min(S, S')`` samples are spliced; a window covering all of them leaves the audio as
    it is."""
    total = min(audio.shape[-1], source_wav.shape[-1])
    start = max(0, min(int(window_samples[0]), total))
    end = max(start, min(int(window_samples[1]), total))
    if start == 0 and end >= total:
        return audio
    gain = _edge_ramps(total, start, end, int(crossfade_s * sample_rate), audio.device).to(audio.dtype)
    source = source_wav[..., :total].to(device=audio.device, dtype=audio.dtype)
    head = gain * audio[..., :total] + (1.0 - gain) * source
    return torch.cat([head, audio[..., total:]], dim=-1)
