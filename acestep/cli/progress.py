"""The progress bar of ``acestep generate``: the job's stage and diffusion step, on stderr (tqdm).

The engine reports ``(stage, fraction)`` (see ``AceStep.generate``); the bar counts diffusion steps,
so it is sized by the schedule the job will run, and every other stage shows where the count stands.
"""

from __future__ import annotations

import sys
import threading
from typing import TextIO

# The engine's stage names, as the bar shows them (the rest are shown as they are: lm, diffusion...).
STAGE_LABELS = {"starting": "load", "conditioning": "encode"}
# Stages that come after the last diffusion step: the count stays full.
AFTER_DIFFUSION = frozenset({"decode", "save", "done"})


def progress_wanted(choice: bool | None, stream: TextIO) -> bool:
    """``--progress``/``--no-progress`` win; by default a bar only where a person watches (a TTY)."""
    if choice is not None:
        return choice
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class StageBar:
    """A listener for the job's progress reports (called from the worker's thread)."""

    def __init__(self, steps: int, stream: TextIO | None = None):
        from tqdm import tqdm

        self.steps = max(int(steps), 1)
        self._stage = "starting"
        self._lock = threading.Lock()
        # mininterval=0: each report is drawn (one per diffusion step at most, so the cost is nil).
        self._bar = tqdm(
            total=self.steps,
            desc=STAGE_LABELS["starting"],
            unit="step",
            file=stream or sys.stderr,
            mininterval=0,
            dynamic_ncols=True,
            leave=True,
        )

    def __call__(self, stage: str, fraction: float) -> None:
        if stage == "diffusion":
            done = round(fraction * self.steps)
        elif stage in AFTER_DIFFUSION:
            done = self.steps
        else:
            done = 0
        with self._lock:
            self._bar.set_description_str(STAGE_LABELS.get(stage, stage), refresh=False)
            if stage == "diffusion" and self._stage != "diffusion":
                # Time from the first step, so the rate and the time left are the sampler's own.
                self._bar.reset(total=self.steps)
            self._stage = stage
            self._bar.n = min(max(done, 0), self.steps)
            self._bar.refresh()

    def close(self) -> None:
        with self._lock:
            self._bar.close()


def diffusion_steps(variant, request) -> int:
    """The number of diffusion steps the job will run (turbo models always run their own table)."""
    from acestep.engine.schedules import build_schedule

    schedule, _ = build_schedule(variant, request.inference_steps, request.shift, request.timesteps)
    return len(schedule)
