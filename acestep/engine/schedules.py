"""Timestep schedules (docs/tasks.md).

Flow convention: x_t = t * noise + (1 - t) * x0, t = 1 is pure noise. A schedule is the list
of timesteps the DiT is evaluated at; the sampler steps from each to the next and finally to 0.
"""

from __future__ import annotations

from acestep.checkpoints.variants import Variant

TURBO_STEPS = 8
TURBO_SHIFTS = (1.0, 2.0, 3.0)
MAX_CUSTOM_STEPS = 20
# Every value of the three 8-step turbo tables; custom turbo timesteps are snapped to these.
TURBO_VALID_TIMESTEPS = (
    1.0,
    0.9545454545454546,
    0.9333333333333333,
    0.9,
    0.875,
    0.8571428571428571,
    0.8333333333333334,
    0.7692307692307693,
    0.75,
    0.6666666666666666,
    0.6428571428571429,
    0.625,
    0.5454545454545454,
    0.5,
    0.4,
    0.375,
    0.3,
    0.25,
    0.2222222222222222,
    0.125,
)


def shifted(t: float, shift: float) -> float:
    return shift * t / (1.0 + (shift - 1.0) * t)


def snap_turbo_shift(shift: float) -> float:
    """Nearest of {1, 2, 3}; ties go down (2.5 -> 2), as upstream."""
    return min(TURBO_SHIFTS, key=lambda s: (abs(s - shift), s))


def turbo_table(shift: float) -> list[float]:
    """The fixed 8-step table: s*t/(1+(s-1)*t) for t = 1, 7/8, ..., 1/8 (no final 0)."""
    s = snap_turbo_shift(shift)
    return [shifted(1.0 - i / TURBO_STEPS, s) for i in range(TURBO_STEPS)]


def linear_schedule(steps: int, shift: float) -> list[float]:
    """Base/SFT: linspace(1, 0, steps + 1) shifted, without the final 0."""
    ts = [1.0 - i / steps for i in range(steps)]
    return [shifted(t, shift) for t in ts] if shift != 1.0 else ts


def _snap_custom(timesteps: list[float]) -> list[float]:
    values = list(timesteps)
    while values and values[-1] == 0.0:
        values.pop()
    values = values[:MAX_CUSTOM_STEPS]
    return [min(TURBO_VALID_TIMESTEPS, key=lambda v: abs(v - t)) for t in values]


def build_schedule(
    variant: Variant, steps: int, shift: float, timesteps: list[float] | None
) -> tuple[list[float], list[str]]:
    """The timesteps to evaluate, plus notes on how the request was interpreted."""
    notes: list[str] = []
    if variant.is_turbo:
        if timesteps:
            snapped = _snap_custom(timesteps)
            if snapped:
                return snapped, notes
        if steps != TURBO_STEPS:
            notes.append(f"turbo models always run {TURBO_STEPS} steps; inference_steps={steps} was not used")
        if snap_turbo_shift(shift) != shift:
            notes.append(f"turbo shift {shift} snapped to {snap_turbo_shift(shift)}")
        return turbo_table(shift), notes
    if timesteps:
        if variant.accepts_custom_timesteps:
            values = list(timesteps)
            if values[-1] != 0.0:
                values.append(0.0)
            return values[:-1], notes
        notes.append("base models ignore custom timesteps; the shifted linear schedule was used")
    return linear_schedule(steps, shift), notes
