"""One generation's progress callback and per-stage timings (``GenerationResult.timings``)."""

from __future__ import annotations

import time
from collections.abc import Callable

ProgressCallback = Callable[[str, float], None]


class StageClock:
    """Reports each stage's progress and records its seconds (rounded) as it ends."""

    def __init__(self, progress: ProgressCallback | None):
        self.report: ProgressCallback = progress or (lambda stage, fraction: None)
        self.timings: dict[str, float] = {}
        self.started = self._clock = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self._clock, 4)
        self._clock = now

    def finish(self) -> None:
        self.timings["total"] = round(time.perf_counter() - self.started, 4)
        self.report("done", 1.0)
