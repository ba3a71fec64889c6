"""The flow-matching objective and its randomness, as upstream ACE-Step 1.5 trains adapters.

``x_t = t * noise + (1 - t) * x0`` and the DiT learns the velocity ``noise - x0`` (mean squared
error over the frames that hold audio). Turbo (distilled, no guidance) draws ``t`` from its eight
inference timesteps at the training shift and keeps every condition; base and SFT draw ``t`` from
a logit-normal (``sigmoid(N(mu, sigma))``) and replace a fraction of the conditions by the model's
learned null embedding (classifier-free-guidance dropout), as upstream's corrected trainer does.

Every draw comes from a ``torch.Generator`` the trainer seeds from (run seed, step, micro-batch),
so a step's randomness does not depend on what ran before it: a resumed run draws what an
uninterrupted one draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TURBO_STEPS = 8  # the turbo model's inference steps; its training timesteps are the same eight


def turbo_timesteps(shift: float, steps: int = TURBO_STEPS) -> torch.Tensor:
    """The turbo schedule's timesteps (1.0 first, the final 0 excluded), shifted as inference
    shifts them: ``shift * u / (1 + (shift - 1) * u)``; shift 3 gives 1.0, 0.9545, ..., 0.3."""
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)[:-1]
    return (shift * u / (1.0 + (shift - 1.0) * u)).to(torch.float32)


@dataclass(frozen=True)
class Objective:
    """How timesteps are drawn and conditions dropped for one DiT variant."""

    discrete: torch.Tensor | None  # turbo's timesteps, or None for the logit-normal
    mu: float
    sigma: float
    cfg_ratio: float

    @classmethod
    def for_variant(
        cls, is_turbo: bool, shift: float, mu: float, sigma: float, cfg_ratio: float
    ) -> Objective:
        if is_turbo:
            return cls(turbo_timesteps(shift), mu, sigma, 0.0)
        return cls(None, mu, sigma, cfg_ratio)

    def timesteps(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """[batch] float32 timesteps in (0, 1]."""
        if self.discrete is not None:
            index = torch.randint(0, self.discrete.numel(), (batch,), generator=generator)
            return self.discrete[index]
        normal = torch.randn(batch, generator=generator, dtype=torch.float32)
        return torch.sigmoid(normal * self.sigma + self.mu)

    def drop_conditions(
        self, states: torch.Tensor, null_embedding: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """``states`` [B, L, D] with each item replaced, with probability ``cfg_ratio``, by the
        null embedding (broadcast over the sequence, as guidance uses it at inference)."""
        if self.cfg_ratio <= 0.0:
            return states
        dropped = torch.rand(states.shape[0], generator=generator) < self.cfg_ratio
        if not bool(dropped.any()):
            return states
        null = null_embedding.to(device=states.device, dtype=states.dtype).reshape(1, 1, -1)
        mask = dropped.to(states.device).view(-1, 1, 1)
        return torch.where(mask, null.expand_as(states), states)


def noisy_input(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``t * noise + (1 - t) * x0`` with ``t`` [B] broadcast over frames and channels."""
    tt = t.to(dtype=x0.dtype, device=x0.device).view(-1, 1, 1)
    return tt * noise + (1.0 - tt) * x0


def flow_loss(
    predicted: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """Mean squared error of the predicted velocity against ``noise - x0``, over valid frames
    (``valid`` [B, T] is 1 where the crop holds audio, 0 on padding), in float32."""
    error = (predicted.float() - (noise - x0).float()).pow(2).mean(dim=-1)  # [B, T]
    weights = valid.to(error)
    return (error * weights).sum() / weights.sum().clamp_min(1.0)


__all__ = ["TURBO_STEPS", "Objective", "flow_loss", "noisy_input", "turbo_timesteps"]
