"""Classifier-free guidance for base and SFT models: the variants upstream's requests name.

The DiT runs on the doubled batch (condition, then ``null_condition_emb`` in every encoder row)
and a variant combines the two velocities:

- ``apg_classic`` (the default): adaptive projected guidance. The difference is accumulated with
  momentum -0.75, its norm over time capped at 2.5, and only its part orthogonal to the
  conditional velocity is added (diffusers' ``normalized_guidance``, eta 0; patches/0003).
- ``cfg``: ``uncond + s * (cond - uncond)``.
- ``adg`` / ``adg_w_norm`` / ``adg_wo_clip``: angle-based guidance on the clean estimates
  ``x - t * v``: the angle between the conditional and unconditional estimates is scaled by
  ``max(s - 1, 0) + 1e-3`` (clipped to 3.14/6, 3.14/3 with the norm kept, or not clipped) and the
  velocity is recovered from the rotated estimate.

A Heun corrector evaluation uses plain CFG for APG (the momentum advances once per step) and for
ADG at t = 0 (ADG divides by t). Guidance applies where ``cfg_interval_start <= t <=
cfg_interval_end`` (compared in the model dtype); outside it the conditional velocity is used as is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer, normalized_guidance

from acestep.request_sampling import ADG_VARIANTS

APG_DEFAULTS = {"eta": 0.0, "norm_threshold": 2.5, "momentum": -0.75}
ADG_ANGLE_CLIP = {"adg": 3.14 / 6, "adg_w_norm": 3.14 / 3}  # upstream's constants, not pi/6, pi/3
ADG_MIN_WEIGHT = 1e-3
COS_LIMIT = 1.0 - 1e-6
SMALL_ANGLE_SINE = 1e-3
PROJECTION_EPS = 1e-8


@dataclass
class Guidance:
    """One generation's guidance: the variant, its scale and interval, and its running state."""

    scale: float
    interval: tuple[float, float]
    null_embedding: torch.Tensor  # [1, 1, D]
    variant: str = "apg_classic"
    params: dict[str, float] = field(default_factory=dict)
    _momentum: MomentumBuffer | None = None

    def applies_at(self, t: torch.Tensor | float) -> bool:
        """Whether ``t`` lies in the interval; a tensor ``t`` compares in its own dtype, as
        upstream (float32's 0.8 counts as inside [0.2, 0.8])."""
        start, end = self.interval
        return bool(start <= t <= end)

    def combine(
        self,
        cond: torch.Tensor,
        uncond: torch.Tensor,
        latents: torch.Tensor,
        t: float,
        corrector: bool = False,
    ) -> torch.Tensor:
        """The guided velocity from the two halves, at ``latents`` and timestep ``t``."""
        if self.variant == "cfg":
            return _cfg(cond, uncond, self.scale)
        if self.variant == "apg_classic":
            return _cfg(cond, uncond, self.scale) if corrector else self._apg(cond, uncond)
        if self.variant in ADG_VARIANTS:
            if corrector and t <= 0.0:
                return _cfg(cond, uncond, self.scale)
            return _adg(latents, cond, uncond, t, self.scale, self.variant, self.params)
        raise ValueError(f"unknown guidance variant {self.variant!r}")

    def momentum(self) -> torch.Tensor | float:
        """APG's running average (0 before the first step), to restore with ``set_momentum``."""
        return 0.0 if self._momentum is None else self._momentum.running_average

    def set_momentum(self, average: torch.Tensor | float, update: torch.Tensor | None = None) -> None:
        """Put APG's running average back to ``average``, then advance it once by ``update``."""
        if self._momentum is None:
            self._momentum = MomentumBuffer(momentum=(APG_DEFAULTS | self.params)["momentum"])
        self._momentum.running_average = average
        if update is not None:
            self._momentum.update(update)

    def _apg(self, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        params = APG_DEFAULTS | self.params
        if self._momentum is None:
            self._momentum = MomentumBuffer(momentum=params["momentum"])
        return normalized_guidance(
            pred_cond=cond,
            pred_uncond=uncond,
            guidance_scale=self.scale - 1.0,
            momentum_buffer=self._momentum,
            eta=params["eta"],
            norm_threshold=params["norm_threshold"],
            use_original_formulation=True,
            norm_dim=(1,),
        )


def _cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    return uncond + scale * (cond - uncond)


def _adg(
    latents, cond, uncond, t: float, scale: float, variant: str, params: dict[str, float]
) -> torch.Tensor:
    """Angle-based guidance ([B, T, C]); the angles in float64, the projection in float32."""
    batch, frames, channels = cond.shape
    weight = max(scale - 1.0, 0.0) + ADG_MIN_WEIGHT
    sigma = torch.tensor(t, device=latents.device, dtype=latents.dtype)
    clean_cond = latents - sigma * cond
    clean_uncond = latents - sigma * uncond
    theta = _angle(clean_cond, clean_uncond).view(batch, frames, 1)
    if variant == "adg_wo_clip":
        rotated = weight * theta
    else:
        limit = params.get("angle_clip", ADG_ANGLE_CLIP[variant])
        rotated = torch.clip(weight * theta, -limit, limit)
    perpendicular = _perpendicular(clean_cond - clean_uncond, clean_uncond)
    sine = torch.sin(theta)
    small = sine <= SMALL_ANGLE_SINE
    turned = perpendicular * torch.sin(rotated) / sine * ~small + perpendicular * weight * small
    estimate = torch.cos(rotated) * clean_cond + turned
    if variant == "adg_w_norm":
        estimate = (
            estimate
            * torch.linalg.norm(clean_cond, dim=1, keepdim=True)
            / torch.linalg.norm(estimate, dim=1, keepdim=True)
        )
    return ((latents - estimate) / sigma).reshape(batch, frames, channels).to(latents.dtype)


def _angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-frame angle between two [B, T, C] tensors over C, in float64, as [B*T, 1]."""
    channels = a.shape[-1]
    a = a.reshape(-1, channels).to(torch.float64)
    b = b.reshape(-1, channels).to(torch.float64)
    a = a / torch.linalg.norm(a, dim=1, keepdim=True)
    b = b / torch.linalg.norm(b, dim=1, keepdim=True)
    cosine = (a * b).sum(dim=1, keepdim=True).clamp(-COS_LIMIT, COS_LIMIT)
    return torch.acos(cosine)


def _perpendicular(difference: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """The part of ``difference`` orthogonal to ``direction`` per frame, in float32."""
    shape = difference.shape
    diff = difference.reshape(-1, shape[-1]).float()
    base = direction.reshape(-1, shape[-1]).float()
    along = (diff * base).sum(dim=1, keepdim=True) / ((base * base).sum(dim=1, keepdim=True) + PROJECTION_EPS)
    return (diff - along * base).reshape(shape)
