"""``acestep generate --demo``: a tiny random-weight checkpoint, built once in the cache dir."""

from __future__ import annotations

import argparse

from acestep import settings

# Said once per run: in the summary, or on stderr with --json (see cli/summary.py and generate.py).
DEMO_NOTICE = (
    "DEMO MODE: a tiny model with RANDOM weights was used. It exercises the whole pipeline, but the "
    "audio it writes is noise, not music."
)


def _demo_inputs(args: argparse.Namespace) -> str:
    """Build (once) the tiny demo checkpoint, and a synthetic source if the task needs one."""
    import soundfile as sf

    from acestep.tasks import SOURCE_TASKS
    from acestep.testing import make_tiny_checkpoint, synthetic_audio

    variant = "turbo" if args.task_type in ("text2music", "repaint", "cover") else "base"
    root = settings.cache_dir() / "demo" / f"upstream-{variant}"
    if not (root / f"acestep-v15-{variant}" / "model.safetensors").is_file():
        make_tiny_checkpoint(root, layout="upstream", variant=variant, seed=0)
    if args.task_type in SOURCE_TASKS and not args.src_audio and not args.audio_code_string:
        args.src_audio = str(root / "demo_source.wav")
        sf.write(args.src_audio, synthetic_audio(8.0), 48000)
    if args.audio_duration <= 0 and not args.src_audio:
        args.audio_duration = 10.0
    return str(root)
