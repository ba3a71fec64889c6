"""The denoising loop around diffusers' DiT, with upstream's step semantics (docs/generation.md).

One step, at timestep ``t`` toward ``t_next`` (flow convention ``x_t = t * noise + (1 - t) * x0``):
1. the velocity: the DiT (doubled with the null condition where guidance applies), clamped and
   smoothed (``velocity.py``);
2. the move: Euler ``x - v * (t - t_next)``, or Heun (a second evaluation at ``t_next``, the two
   velocities averaged), or SDE (the clean estimate ``x - v * t`` re-noised to ``t_next`` with
   fresh seeded noise); turbo's last step jumps to ``x0 = x - v * t`` with one evaluation;
3. the corrections: DCW toward the clean estimate (``dcw.py``), then the task's per-step source
   injection (repaint), if any.

The schedule is rounded to the model dtype before use, as upstream builds it in that dtype. A
cover with strength < 1 switches for good to the non-cover condition set after
``int(steps * strength)`` steps (patches/0005). Nothing here reads a global RNG: the only draws
are the SDE's, through the ``fresh_noise`` callable the engine makes from the items' generators.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from acestep.engine.sampling import dcw as dcw_step
from acestep.engine.sampling.guidance import Guidance
from acestep.engine.sampling.settings import SamplerSettings
from acestep.engine.sampling.velocity import clamp_velocity, smooth_velocity

# (step index, t_next, latents) -> latents: a task's correction after each step (repaint).
StepEdit = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Condition:
    """One condition set for the DiT (batch 1; expanded to the batch at use)."""

    encoder_hidden_states: torch.Tensor  # [1, S, D]
    context_latents: torch.Tensor  # [1, F, 2C]

    def batched(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Contiguous once per generation: a stride-0 batch makes every step's projections slower.
        return (
            self.encoder_hidden_states.expand(batch, -1, -1).contiguous(),
            self.context_latents.expand(batch, -1, -1).contiguous(),
        )


class VelocityField:
    """The DiT as a velocity field under one condition set, with the generation's guidance."""

    def __init__(
        self,
        transformer: torch.nn.Module,
        condition: Condition,
        batch: int,
        guidance: Guidance | None,
        interval_in_float64: bool = False,
    ):
        """``interval_in_float64``: test the guidance interval on ``float(t)`` (upstream's flow
        edit does) rather than in the model dtype (its sampling loop does)."""
        self.transformer = transformer
        self.guidance = guidance
        self.batch = batch
        self.interval_in_float64 = interval_in_float64
        self.use(condition)

    def use(self, condition: Condition) -> None:
        self.encoder, self.context = condition.batched(self.batch)

    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, corrector: bool = False, record: list | None = None
    ) -> torch.Tensor:
        """The velocity at ``x``, ``t``; ``record`` collects ``cond - uncond`` where guidance
        applies (flow edit advances APG's momentum by their average)."""
        t_vec = t.expand(x.shape[0])
        if self.guidance is None:
            return self._run(x, t_vec, self.encoder, self.context)
        null = self.guidance.null_embedding.to(self.encoder).expand_as(self.encoder)
        out = self._run(
            torch.cat([x, x]),
            torch.cat([t_vec, t_vec]),
            torch.cat([self.encoder, null]),
            torch.cat([self.context, self.context]),
        )
        cond, uncond = out.chunk(2)
        if not self.guidance.applies_at(float(t) if self.interval_in_float64 else t):
            return cond
        if record is not None:
            record.append(cond - uncond)
        return self.guidance.combine(cond, uncond, x, float(t), corrector)

    def _run(self, x, t_vec, encoder, context) -> torch.Tensor:
        return self.transformer(
            hidden_states=x,
            timestep=t_vec,
            timestep_r=t_vec,
            encoder_hidden_states=encoder,
            context_latents=context,
            return_dict=False,
        )[0]


@torch.inference_mode()
def denoise(
    transformer: torch.nn.Module,
    noise: torch.Tensor,
    schedule: list[float],
    condition: Condition,
    settings: SamplerSettings | None = None,
    guidance: Guidance | None = None,
    switch: tuple[int, Condition] | None = None,
    start: torch.Tensor | None = None,
    step_edit: StepEdit | None = None,
    fresh_noise: Callable[[], torch.Tensor] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Integrate from ``start`` (default ``noise``, at ``schedule[0]``) to x0; latents [B, F, C]."""
    settings = settings or SamplerSettings()
    if settings.sde and fresh_noise is None:
        raise ValueError("SDE sampling needs a fresh_noise source (seeded per item)")
    dtype, device = noise.dtype, noise.device
    times = torch.tensor([*schedule, 0.0], dtype=dtype, device=device)
    values = times.tolist()  # the same rounded timesteps as Python floats: one device read, not one a step
    field = VelocityField(transformer, condition, noise.shape[0], guidance)
    x = noise if start is None else start
    previous: torch.Tensor | None = None
    steps = len(schedule)
    for step in range(steps):
        if switch is not None and step == switch[0]:
            field.use(switch[1])
        t, t_next = times[step], times[step + 1]
        velocity = _velocity(field, x, t, settings, previous)
        clean = x - velocity * t
        last_jump = step == steps - 1 and settings.final_jump
        if last_jump:
            moved = clean
        elif settings.sde:
            moved = (
                _renoise(clean, t_next, fresh_noise)
                if values[step + 1] > 0.0
                else x - velocity * (t - t_next)
            )
        elif settings.heun:
            moved, velocity = _heun(field, x, t, t_next, velocity, settings)
        else:
            moved = x - velocity * (t - t_next)
        if settings.dcw is not None:
            moved = dcw_step.correct(moved, clean, values[step], settings.dcw)
        x = moved
        previous = velocity
        if step_edit is not None and not last_jump:
            x = step_edit(step, t_next, x)
        if on_step is not None:
            on_step(step + 1, steps)
    return x


def _velocity(field: VelocityField, x, t, settings: SamplerSettings, previous) -> torch.Tensor:
    velocity = clamp_velocity(field(x, t), x, settings.velocity_norm_threshold)
    return smooth_velocity(velocity, previous, settings.velocity_ema_factor)


def _heun(field: VelocityField, x, t, t_next, velocity, settings: SamplerSettings):
    """The predictor-corrector move; returns the new latents and the averaged velocity."""
    dt = t - t_next
    predicted = x - velocity * dt
    second = clamp_velocity(
        field(predicted, t_next, corrector=True), predicted, settings.velocity_norm_threshold
    )
    second = smooth_velocity(second, velocity, settings.velocity_ema_factor)
    average = 0.5 * (velocity + second)
    return x - average * dt, average


def _renoise(
    clean: torch.Tensor, t_next: torch.Tensor, fresh_noise: Callable[[], torch.Tensor]
) -> torch.Tensor:
    return t_next * fresh_noise() + (1.0 - t_next) * clean
