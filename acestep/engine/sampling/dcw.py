"""DCW: differential correction in the wavelet domain, applied after every sampler step.

The step's new latent ``x`` and the clean estimate ``y = x_before - v * t`` are split by a
one-level discrete wavelet transform along time ([B, T, C] latents, 25 frames a second); the
chosen band(s) of ``x`` are pushed away from ``y``'s: ``x_band += s * (x_band - y_band)``, and the
inverse transform gives the corrected latent. The strength follows the step's timestep ``t``:
the low band ``t * scaler`` (strong early), the high band ``(1 - t) * scaler`` (strong late);
``double`` corrects both (the high band with ``high_scaler``); ``pix`` corrects the latent itself by
``scaler`` with no transform. Turbo models use it by default (docs/generation.md).

The transform is ptwt's (PyWavelets' conventions, zero padding), computed in float32; the result
is cropped to T (odd lengths gain a frame) and returned in the latent's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import ptwt
import torch

FP16_LIMIT = 65000.0  # float16 results are clamped below its largest finite value


@dataclass(frozen=True)
class DcwSettings:
    mode: str  # low | high | double | pix
    scaler: float
    high_scaler: float
    wavelet: str

    @property
    def active(self) -> bool:
        if self.mode == "double":
            return self.scaler != 0.0 or self.high_scaler != 0.0
        return self.scaler != 0.0

    def strengths(self, t: float) -> tuple[float, float]:
        """(low band, high band) strengths at timestep ``t``."""
        if self.mode == "low":
            return t * self.scaler, 0.0
        if self.mode == "high":
            return 0.0, (1.0 - t) * self.scaler
        if self.mode == "double":
            return t * self.scaler, (1.0 - t) * self.high_scaler
        raise ValueError(f"dcw mode {self.mode!r} has no wavelet bands")


def correct(x: torch.Tensor, clean: torch.Tensor, t: float, settings: DcwSettings) -> torch.Tensor:
    """``x`` after the DCW correction toward ``clean`` at timestep ``t`` (a Python float)."""
    if settings.mode == "pix":
        if settings.scaler == 0.0:
            return x
        return _fit(x + settings.scaler * (x - clean), x.dtype)
    low, high = settings.strengths(t)
    if low == 0.0 and high == 0.0:
        return x
    frames = x.shape[1]
    x_low, x_high = _split(x, settings.wavelet)
    y_low, y_high = _split(clean, settings.wavelet)
    if low != 0.0:
        x_low = x_low + low * (x_low - y_low)
    if high != 0.0:
        x_high = x_high + high * (x_high - y_high)
    joined = ptwt.waverec([x_low, x_high], settings.wavelet, axis=-1)
    return _fit(joined[..., :frames].transpose(1, 2), x.dtype)


def _split(latents: torch.Tensor, wavelet: str) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T, C] -> the (low, high) bands along T, each [B, C, ~T/2], in float32."""
    signal = latents.to(torch.float32).transpose(1, 2).contiguous()
    low, high = ptwt.wavedec(signal, wavelet, mode="zero", level=1, axis=-1)
    return low, high


def _fit(result: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.float16:
        result = result.clamp(-FP16_LIMIT, FP16_LIMIT)
    return result.contiguous().to(dtype)
