"""The denoising loop with upstream's semantics around diffusers' DiT.

- Euler steps through the schedule and finally to t = 0 (for turbo the last step is upstream's
  ``x0 = x - v * t_last``, the same arithmetic).
- The schedule is rounded to the model dtype before use, as upstream builds it in that dtype.
- Base/SFT guidance: the batch is doubled with ``null_condition_emb`` in every encoder row of
  the unconditional half; APG (momentum -0.75, norm threshold 2.5 over time, eta 0) applies only
  where ``cfg_interval_start <= t <= cfg_interval_end`` on the raw timestep (patches/0003).
- Cover strength < 1: after ``int(steps * strength)`` steps sampling switches for good to the
  non-cover condition set (patches/0005).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer, normalized_guidance

APG_MOMENTUM = -0.75
APG_NORM_THRESHOLD = 2.5


@dataclass
class Condition:
    """One condition set for the DiT (batch 1; expanded to the batch at use)."""

    encoder_hidden_states: torch.Tensor  # [1, S, D]
    context_latents: torch.Tensor  # [1, F, 2C]


@dataclass
class Guidance:
    scale: float
    interval: tuple[float, float]
    null_embedding: torch.Tensor  # [1, 1, D]


def _batched(cond: Condition, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Contiguous once per generation: a stride-0 batch makes every step's projections slower.
    return (
        cond.encoder_hidden_states.expand(batch, -1, -1).contiguous(),
        cond.context_latents.expand(batch, -1, -1).contiguous(),
    )


@torch.inference_mode()
def denoise(
    transformer: torch.nn.Module,
    noise: torch.Tensor,
    schedule: list[float],
    condition: Condition,
    guidance: Guidance | None = None,
    switch: tuple[int, Condition] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Integrate from ``noise`` (t = 1) to x0 and return the latents [B, F, C]."""
    batch, dtype, device = noise.shape[0], noise.dtype, noise.device
    times = torch.tensor([*schedule, 0.0], dtype=dtype, device=device)
    x = noise
    momentum = MomentumBuffer(momentum=APG_MOMENTUM) if guidance else None
    encoder, context = _batched(condition, batch)
    for step in range(len(schedule)):
        if switch is not None and step == switch[0]:
            encoder, context = _batched(switch[1], batch)
        t_cur, t_next = times[step], times[step + 1]
        t_vec = t_cur.expand(batch)
        if guidance is None:
            velocity = transformer(
                hidden_states=x,
                timestep=t_vec,
                timestep_r=t_vec,
                encoder_hidden_states=encoder,
                context_latents=context,
                return_dict=False,
            )[0]
        else:
            velocity = _guided_velocity(
                transformer, x, t_vec, encoder, context, guidance, momentum, float(t_cur)
            )
        x = x - velocity * (t_cur - t_next)
        if on_step is not None:
            on_step(step + 1, len(schedule))
    return x


def _guided_velocity(transformer, x, t_vec, encoder, context, guidance: Guidance, momentum, t_value: float):
    null = guidance.null_embedding.to(encoder).expand_as(encoder)
    out = transformer(
        hidden_states=torch.cat([x, x]),
        timestep=torch.cat([t_vec, t_vec]),
        timestep_r=torch.cat([t_vec, t_vec]),
        encoder_hidden_states=torch.cat([encoder, null]),
        context_latents=torch.cat([context, context]),
        return_dict=False,
    )[0]
    cond, uncond = out.chunk(2)
    start, end = guidance.interval
    if not start <= t_value <= end:
        return cond
    return normalized_guidance(
        pred_cond=cond,
        pred_uncond=uncond,
        guidance_scale=guidance.scale - 1.0,
        momentum_buffer=momentum,
        eta=0.0,
        norm_threshold=APG_NORM_THRESHOLD,
        use_original_formulation=True,
        norm_dim=(1,),
    )
