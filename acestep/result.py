"""``GenerationResult`` and ``AudioItem``: what a generation hands back to every face."""

from __future__ import annotations

from pydantic import BaseModel, computed_field


class AudioItem(BaseModel):
    """One generated file of a batch."""

    path: str
    seed: int
    sample_rate: int
    duration: float
    peak: float


class GenerationResult(BaseModel):
    """What a generation produced: files, the seeds actually used, metas and per-stage timings."""

    items: list[AudioItem]
    sample_rate: int
    task_type: str
    model: str
    variant: str
    metas: dict
    timings: dict[str, float]
    warnings: list[str] = []

    @computed_field
    @property
    def audio_paths(self) -> list[str]:
        return [item.path for item in self.items]

    @computed_field
    @property
    def seeds(self) -> list[int]:
        return [item.seed for item in self.items]
