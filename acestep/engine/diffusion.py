"""The diffusion stage of one generation: where sampling starts, what it keeps of a source, and the
loop itself (docs/generation.md).

1. The start: each item's seeded noise, blended with its retake seed's noise (``retake_variance``),
   then, with ``cover_noise_strength``, the source noised to the nearest schedule step, from
   which the schedule resumes.
2. The loop (``sampling.denoise``), with repaint's per-step source injection outside the window
   for the first steps its mode asks for.
3. After the loop, repaint's latent crossfade at the window's edges.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from acestep.engine import repaint
from acestep.engine.conditioning import TaskPlan
from acestep.engine.cover_noise import cover_noise_start, noised_start
from acestep.engine.sampling import Condition, Guidance, SamplerSettings, StepEdit, denoise
from acestep.engine.sampling.flow_edit import EditWindow, flow_edit
from acestep.engine.seeds import generators, item_noise, resolve_seeds, retake_blend
from acestep.request import GenerationRequest
from acestep.request_sampling import DEFAULT_GUIDANCE


@dataclass
class Diffusion:
    """What the stage needs beyond the plan: the settings, guidance and condition sets."""

    settings: SamplerSettings
    condition: Condition
    guidance: Guidance | None = None
    # A cover with strength < 1 switches to this condition set after int(steps * strength) steps.
    late_condition: Condition | None = None
    # Flow edit: the source audio's own caption and lyrics (the condition above is the target's).
    source_condition: Condition | None = None
    notes: list[str] = field(default_factory=list)  # what resolving the settings changed


@dataclass
class Sampled:
    latents: torch.Tensor
    schedule: list[float]  # the timesteps actually evaluated
    retake_seeds: list[int] | None = None


def sample(
    dit: torch.nn.Module,
    request: GenerationRequest,
    plan: TaskPlan,
    schedule: list[float],
    diffusion: Diffusion,
    seeds: list[int],
    latent_dim: int,
    device: torch.device,
    dtype: torch.dtype,
    on_step: Callable[[int, int], None] | None = None,
) -> Sampled:
    """Seeded noise through the loop (or a flow edit of the source); the latents [B, frames, C]."""
    shape = (plan.frames, latent_dim)
    if diffusion.source_condition is not None:
        return _flow_edit(dit, request, plan, schedule, diffusion, seeds, shape, device, dtype, on_step)
    item_generators = generators(seeds, device)
    noise = item_noise(item_generators, shape, device, dtype)
    retake_seeds = None
    if request.retake_variance > 0.0:
        retake_seeds = resolve_seeds(
            -1 if request.retake_seed is None else request.retake_seed, len(seeds), use_random_seed=False
        )
        retake = item_noise(generators(retake_seeds, device), shape, device, dtype)
        noise = retake_blend(noise, retake, request.retake_variance)
    start = None
    begin = cover_noise_start(schedule, request.cover_noise_strength, dtype)
    if begin is not None:
        index, t_start = begin
        schedule = schedule[index:]
        start = noised_start(noise, plan.cover_noise_latents(), t_start)
    switch = None
    if diffusion.late_condition is not None:
        switch = (int(len(schedule) * request.audio_cover_strength), diffusion.late_condition)
    latents = denoise(
        dit,
        noise,
        schedule,
        diffusion.condition,
        diffusion.settings,
        diffusion.guidance,
        switch,
        start=start,
        step_edit=_source_injection(plan, noise, len(schedule)),
        fresh_noise=lambda: item_noise(item_generators, shape, device, dtype),
        on_step=on_step,
    )
    if plan.repaint is not None and plan.repaint_mask is not None:
        latents = repaint.blend_boundaries(
            latents, plan.clean_latents, plan.repaint_mask, plan.repaint.latent_crossfade_frames
        ).to(dtype)
    return Sampled(latents, schedule, retake_seeds)


def _source_injection(plan: TaskPlan, noise: torch.Tensor, steps: int) -> StepEdit | None:
    """Repaint: outside the window, the source noised to the next timestep replaces the latents
    after each of the first ``injection_steps`` steps."""
    if plan.repaint is None or plan.repaint_mask is None:
        return None
    cutoff = repaint.injection_steps(plan.repaint.injection_ratio, steps)
    if cutoff <= 0:
        return None

    def inject(step: int, t_next: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if step >= cutoff:
            return x
        return repaint.inject_source(x, t_next, noise, plan.clean_latents, plan.repaint_mask)

    return inject


def _flow_edit(
    dit, request, plan: TaskPlan, schedule, diffusion: Diffusion, seeds, shape, device, dtype, on_step
):
    """The source latents edited toward the request's text (``sampling/flow_edit.py``); the
    forward noise comes from the retake seeds when given, else from the items' seeds."""
    noise_seeds = seeds
    if request.retake_seed is not None:
        noise_seeds = resolve_seeds(request.retake_seed, len(seeds), use_random_seed=False)
    noise_generators = generators(noise_seeds, device)
    guidance = diffusion.guidance

    def fresh_guidance() -> Guidance | None:
        if guidance is None:
            return None
        # APG (flow edit's only guidance), with the request's APG parameters and its own momentum.
        params = guidance.params if guidance.variant == DEFAULT_GUIDANCE else {}
        return Guidance(guidance.scale, guidance.interval, guidance.null_embedding, DEFAULT_GUIDANCE, params)

    window = EditWindow(request.flow_edit_n_min, request.flow_edit_n_max, request.flow_edit_n_avg)
    source = plan.clean_latents.expand(len(seeds), -1, -1).to(dtype)
    latents = flow_edit(
        dit,
        source,
        schedule,
        diffusion.source_condition,
        diffusion.condition,
        window,
        lambda: item_noise(noise_generators, shape, device, dtype),
        fresh_guidance,
        diffusion.settings.velocity_norm_threshold,
        diffusion.settings.velocity_ema_factor,
        on_step,
    )
    retake = noise_seeds if noise_seeds is not seeds else None
    return Sampled(latents, schedule, retake)
