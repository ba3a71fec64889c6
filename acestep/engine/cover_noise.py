"""``cover_noise_strength``: start sampling part-way down the schedule from the source latents
noised to that point, instead of from pure noise (docs/tasks.md).

Upstream applies it to every task whenever the strength is above 0; the latents it noises are
the task's context before cover's FSQ round trip (``TaskPlan.cover_noise_latents``). Strength 1
starts at the schedule's last timestep (closest to the source), 0 is plain noise.
"""

from __future__ import annotations

import torch


def cover_noise_start(
    schedule: list[float], strength: float, dtype: torch.dtype | None = None
) -> tuple[int, float] | None:
    """``(start_index, t_start)``: the schedule value (without the final 0) nearest to
    ``1 - strength``, the first of equally near ones, as a Python float; ``None`` when the strength
    is 0 (sampling starts from noise). With ``dtype`` the values are first rounded to it, as
    upstream compares the model-dtype schedule. Sampling then runs ``schedule[start_index:]``."""
    if strength <= 0.0 or not schedule:
        return None
    values = [float(t) for t in schedule]
    if dtype is not None:
        values = torch.tensor(values, dtype=dtype).tolist()
    level = 1.0 - strength
    t_start = min(values, key=lambda t: abs(t - level))
    return values.index(t_start), t_start


def noised_start(noise: torch.Tensor, src_latents: torch.Tensor, t: float) -> torch.Tensor:
    """The first sampling state: ``t * noise + (1 - t) * src_latents`` (source [1 or B, F, C])."""
    return t * noise + (1.0 - t) * src_latents
