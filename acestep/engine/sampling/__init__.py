"""The diffusion sampler: the loop, its solvers and corrections, and guidance (docs/generation.md)."""

from acestep.engine.sampling.guidance import Guidance
from acestep.engine.sampling.loop import Condition, StepEdit, denoise
from acestep.engine.sampling.settings import SamplerSettings

__all__ = ["Condition", "Guidance", "SamplerSettings", "StepEdit", "denoise"]
