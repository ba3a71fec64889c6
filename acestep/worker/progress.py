"""One overall fraction for a job: each engine stage's own fraction placed in its band.

The engine reports ``(stage, fraction)`` with a fraction that restarts at 0 in every stage
(``AceStep.generate``). Clients draw one bar, so the worker turns that into one overall value
with upstream's bands (LM up to 0.5, DiT 0.51-0.79, decode 0.8, save 0.99, done 1.0), and never
lets it go down (patches/0047). A job without the LM goes from ``starting`` straight to the DiT's
band at 0.51, as upstream does. The table is data; ``overall`` only reads it.
"""

from __future__ import annotations

# stage -> (start, end) of its band: a stage's fraction f in [0, 1] is start + (end - start) * f.
STAGE_BANDS: dict[str, tuple[float, float]] = {
    "queued": (0.0, 0.0),
    "starting": (0.01, 0.01),  # picked up by the worker; the model may still be loading
    "lm": (0.1, 0.5),  # the 5 Hz LM (metadata, then audio codes)
    "conditioning": (0.51, 0.52),  # source/reference encoding and the text condition
    "diffusion": (0.52, 0.79),  # the DiT's steps
    "decode": (0.8, 0.8),  # the VAE decode
    "save": (0.99, 0.99),  # writing the files
    "done": (1.0, 1.0),
}
# A training job's stages: preprocessing's three passes, the updates, writing the adapter.
TRAINING_BANDS: dict[str, tuple[float, float]] = {
    "queued": (0.0, 0.0),
    "starting": (0.01, 0.01),
    "preprocess_vae": (0.02, 0.06),
    "preprocess_text": (0.06, 0.07),
    "preprocess_condition": (0.07, 0.08),
    "train": (0.08, 0.98),
    "saving": (0.99, 0.99),
    "done": (1.0, 1.0),
}
BANDS = STAGE_BANDS | TRAINING_BANDS


def overall(stage: str, fraction: float, previous: float = 0.0) -> float:
    """The job's overall fraction after a report of ``stage`` at ``fraction``; never below
    ``previous``. A stage the table does not know leaves the value where it was."""
    band = BANDS.get(stage)
    if band is None:
        return previous
    start, end = band
    value = start + (end - start) * min(max(float(fraction), 0.0), 1.0)
    return max(previous, value)


__all__ = ["STAGE_BANDS", "TRAINING_BANDS", "overall"]
