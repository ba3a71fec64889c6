"""Flow edit: move existing audio toward a new caption and lyrics (``flow_edit_morph``).

The source latents are not sampled from noise. Inside the window of steps ``[int(n * n_min),
int(n * n_max))`` the edit integrates the difference of two velocities: the target condition's at
``z_tar = z_edit + z_src - x_src`` and the source condition's at ``z_src = (1 - t) x_src + t e``,
with fresh seeded noise ``e`` for each of ``n_avg`` draws (averaged):
``z_edit -= (t - t_next) * (v_tar - v_src)``. After the window, the target alone carries on with
Euler from ``z_edit + z_src - x_src``. Steps before ``n_min`` are skipped.

Each branch keeps its own APG momentum (restored before every draw, advanced once per step by the
averaged difference) and its own velocity smoothing. Heun, DCW and the ADG variants are not used
here (upstream's flow edit has none of them); the engine notes it when a request asks for them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from acestep.engine.sampling.guidance import Guidance
from acestep.engine.sampling.loop import Condition, VelocityField
from acestep.engine.sampling.velocity import clamp_velocity, smooth_velocity


@dataclass(frozen=True)
class EditWindow:
    n_min: float = 0.0
    n_max: float = 1.0
    n_avg: int = 1

    def steps(self, total: int) -> tuple[int, int]:
        return int(total * self.n_min), int(total * self.n_max)


class _Branch:
    """One trajectory (source or target): its velocity field, momentum and last velocity."""

    def __init__(self, transformer, condition: Condition, batch: int, guidance: Guidance | None):
        self.field = VelocityField(transformer, condition, batch, guidance, interval_in_float64=True)
        self.guidance = guidance
        self.previous: torch.Tensor | None = None
        self.diffs: list[torch.Tensor] = []

    def velocity(self, x: torch.Tensor, t: torch.Tensor, threshold: float) -> torch.Tensor:
        return clamp_velocity(self.field(x, t, record=self.diffs), x, threshold)

    def smooth(self, velocity: torch.Tensor, factor: float) -> torch.Tensor:
        velocity = smooth_velocity(velocity, self.previous, factor)
        self.previous = velocity
        return velocity


@torch.inference_mode()
def flow_edit(
    transformer: torch.nn.Module,
    source_latents: torch.Tensor,
    schedule: list[float],
    source: Condition,
    target: Condition,
    window: EditWindow,
    fresh_noise: Callable[[], torch.Tensor],
    guidance: Callable[[], Guidance | None] = lambda: None,
    velocity_norm_threshold: float = 0.0,
    velocity_ema_factor: float = 0.0,
    on_step: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """The edited latents [B, F, C]; ``guidance`` makes one fresh guidance state per branch."""
    dtype, batch = source_latents.dtype, source_latents.shape[0]
    times = torch.tensor([*schedule, 0.0], dtype=dtype, device=source_latents.device)
    first, last = window.steps(len(schedule))
    edited = source_latents.clone()
    src = _Branch(transformer, source, batch, guidance())
    tar = _Branch(transformer, target, batch, guidance())
    carried: torch.Tensor | None = None  # the target's own trajectory after the window
    for step in range(len(schedule)):
        if step < first:
            continue
        t, t_next = times[step], times[step + 1]
        if step < last:
            v_src, v_tar = _averaged(
                src, tar, edited, source_latents, t, window.n_avg, fresh_noise, velocity_norm_threshold
            )
            v_src = src.smooth(v_src, velocity_ema_factor)
            v_tar = tar.smooth(v_tar, velocity_ema_factor)
            edited = edited - (t - t_next) * (v_tar - v_src)
        else:
            if carried is None:
                carried = edited + _noised(source_latents, t, fresh_noise()) - source_latents
            velocity = tar.smooth(tar.velocity(carried, t, velocity_norm_threshold), velocity_ema_factor)
            carried = carried - (t - t_next) * velocity
        if on_step is not None:
            on_step(step + 1, len(schedule))
    return edited if carried is None else carried


def _averaged(src: _Branch, tar: _Branch, edited, source_latents, t, draws: int, fresh_noise, threshold):
    """Both branches' velocities averaged over ``draws`` noise draws; each branch's APG momentum
    starts every draw from the same state and advances once, by the averaged difference."""
    starts = [branch.guidance.momentum() if branch.guidance else None for branch in (src, tar)]
    sums = [torch.zeros_like(edited), torch.zeros_like(edited)]
    for branch in (src, tar):
        branch.diffs.clear()
    for _ in range(draws):
        for branch, start in zip((src, tar), starts, strict=True):
            if branch.guidance is not None:
                branch.guidance.set_momentum(start)
        z_src = _noised(source_latents, t, fresh_noise())
        z_tar = edited + z_src - source_latents
        sums[0] = sums[0] + src.velocity(z_src, t, threshold)
        sums[1] = sums[1] + tar.velocity(z_tar, t, threshold)
    for branch, start in zip((src, tar), starts, strict=True):
        if branch.guidance is not None:
            update = sum(branch.diffs) / draws if branch.diffs else None
            branch.guidance.set_momentum(start, update)
    return sums[0] / draws, sums[1] / draws


def _noised(clean: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    t_value = float(t)
    return (1.0 - t_value) * clean + t_value * noise
