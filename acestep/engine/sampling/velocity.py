"""Velocity clamping and smoothing between sampler steps (upstream's #986 and #987).

Both act per batch item on the whole [T, C] velocity, after guidance and before the step:
- clamp: the velocity's norm is held below ``threshold`` times the current latent's norm;
- smoothing: an exponential moving average with the previous step's velocity.
"""

from __future__ import annotations

import torch

NORM_EPS = 1e-10  # keeps a zero latent or velocity from dividing by zero


def clamp_velocity(velocity: torch.Tensor, latents: torch.Tensor, threshold: float) -> torch.Tensor:
    """Scale each item's velocity so that ``|v| <= threshold * |x|`` (0: unchanged)."""
    if threshold <= 0.0:
        return velocity
    x_norm = torch.linalg.vector_norm(latents, dim=(1, 2), keepdim=True)
    v_norm = torch.linalg.vector_norm(velocity, dim=(1, 2), keepdim=True)
    scale = (threshold * (x_norm + NORM_EPS) / (v_norm + NORM_EPS)).clamp(max=1.0)
    return velocity * scale


def smooth_velocity(velocity: torch.Tensor, previous: torch.Tensor | None, factor: float) -> torch.Tensor:
    """``(1 - f) * v + f * previous`` (unchanged when ``factor`` is 0 or there is no previous)."""
    if factor <= 0.0 or previous is None:
        return velocity
    return (1.0 - factor) * velocity + factor * previous
