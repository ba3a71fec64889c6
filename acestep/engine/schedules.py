"""Timestep schedules (docs/tasks.md).

Flow convention: x_t = t * noise + (1 - t) * x0, t = 1 is pure noise. A schedule is the list
of timesteps the DiT is evaluated at; the sampler steps from each to the next and finally to 0.
"""

from __future__ import annotations

import torch

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
    """Nearest of {1, 2, 3}; ties go down (2.5 -> 2): the shifts of the three fixed tables."""
    return min(TURBO_SHIFTS, key=lambda s: (abs(s - shift), s))


def turbo_table(shift: float) -> list[float]:
    """A fixed 8-step table: s*t/(1+(s-1)*t) for t = 1, 7/8, ..., 1/8 (no final 0)."""
    return turbo_schedule(TURBO_STEPS, snap_turbo_shift(shift))


def turbo_schedule(steps: int, shift: float) -> list[float]:
    """Turbo with ``steps`` (at most 20): 1 - i/n shifted by the exact shift, in Python floats, as
    upstream's newest turbo loop builds it; 8 steps at shift 1, 2 or 3 is one of the fixed tables."""
    count = min(steps, MAX_CUSTOM_STEPS)
    values = [1.0 - i / count for i in range(count)]
    return [shifted(t, shift) for t in values] if shift != 1.0 else values


def linear_schedule(steps: int, shift: float, dtype: torch.dtype = torch.float32) -> list[float]:
    """Base/SFT: linspace(1, 0, steps + 1) shifted, without the final 0. Computed on a tensor of the
    model dtype, as upstream does (its values differ from float64-then-rounded by an ulp)."""
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=dtype)
    if shift != 1.0:
        t = shift * t / (1 + (shift - 1) * t)
    return t[:-1].tolist()


def _snap_custom(timesteps: list[float]) -> list[float]:
    values = list(timesteps)
    while values and values[-1] == 0.0:
        values.pop()
    values = values[:MAX_CUSTOM_STEPS]
    return [min(TURBO_VALID_TIMESTEPS, key=lambda v: abs(v - t)) for t in values]


def build_schedule(
    variant: Variant,
    steps: int,
    shift: float,
    timesteps: list[float] | None,
    dtype: torch.dtype = torch.float32,
) -> tuple[list[float], list[str]]:
    """The timesteps to evaluate, plus notes on how the request was interpreted."""
    notes: list[str] = []
    if variant.is_turbo:
        if timesteps:
            snapped = _snap_custom(timesteps)
            if snapped:
                return snapped, notes
        if steps > MAX_CUSTOM_STEPS:
            notes.append(f"turbo runs at most {MAX_CUSTOM_STEPS} steps; inference_steps={steps} was cut")
        return turbo_schedule(steps, shift), notes
    if timesteps:
        # Upstream evaluates every value but the last; a list that does not end at 0 gains a final
        # 0 here, so sampling always ends clean (patches/0050).
        values = list(timesteps)
        if values[-1] != 0.0:
            values.append(0.0)
        return values[:-1], notes
    return linear_schedule(steps, shift, dtype), notes
