"""Output shaping every task shares (stems included): the latent shift and rescale before the VAE
decode, and the fades after peak normalisation (docs/tasks.md, "Output shaping")."""

from __future__ import annotations

import torch

from acestep.engine.audio_io import SAMPLE_RATE


def shape_latents(latents: torch.Tensor, shift: float = 0.0, rescale: float = 1.0) -> torch.Tensor:
    """``latents * rescale + shift``, after the latents checks and before decoding; the defaults
    (0, 1) return the latents untouched."""
    if shift == 0.0 and rescale == 1.0:
        return latents
    return latents * rescale + shift


def fade_samples(seconds: float, sample_rate: int = SAMPLE_RATE) -> int:
    return round(seconds * sample_rate) if seconds > 0 else 0


def apply_fades(
    wav: torch.Tensor, fade_in_s: float = 0.0, fade_out_s: float = 0.0, sample_rate: int = SAMPLE_RATE
) -> torch.Tensor:
    """Linear fades over ``round(seconds * rate)`` samples (at most the whole item) on every
    channel of ``wav`` [..., samples]: the first sample and the last sample become 0."""
    fade_in, fade_out = fade_samples(fade_in_s, sample_rate), fade_samples(fade_out_s, sample_rate)
    if not fade_in and not fade_out:
        return wav
    wav = wav.clone()
    total = wav.shape[-1]
    options = {"dtype": wav.dtype, "device": wav.device}
    if fade_in:
        n = min(fade_in, total)
        wav[..., :n] = wav[..., :n] * torch.linspace(0.0, 1.0, n, **options)
    if fade_out:
        n = min(fade_out, total)
        wav[..., total - n :] = wav[..., total - n :] * torch.linspace(1.0, 0.0, n, **options)
    return wav
