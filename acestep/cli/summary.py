"""What ``acestep generate`` prints when not ``--json``: what it made, from what, where the files are,
how long it took; after a ``--demo`` run, once, that the audio is noise and the commands for music."""

from __future__ import annotations

import argparse
import shlex

from acestep.cli.demo import DEMO_NOTICE
from acestep.cli.lm_options import lm_summary

# The placeholder for the user's own source audio in the suggested command.
YOUR_SOURCE = "YOUR_SONG.wav"
REAL_ROOT = "checkpoints"


def summary_lines(result, args: argparse.Namespace, wall_s: float, demo_source: bool = False) -> list[str]:
    """The plain-text report of one finished job (``result`` is its ``GenerationResult``)."""
    count = len(result.items)
    what = result.task_type
    if args.track_name and result.task_type in ("lego", "extract"):
        what += f" of the {args.track_name} track"
    if args.track_classes and result.task_type == "complete":
        what += f" with {args.track_classes}"
    source = ""
    if args.src_audio:
        source = f", from the source {args.src_audio}" + (" (a synthetic demo tone)" if demo_source else "")
    files = f"{count} file{'s' if count != 1 else ''}"
    lines = [f"Made {files}: {what} by {result.model} ({result.variant} model){source}."]
    for item in result.items:
        lines.append(f"  {item.path}  ({item.duration:.2f} s, {item.sample_rate} Hz, seed {item.seed})")
    lines.append(f"Took {wall_s:.1f} s in all; the generation itself {result.timings['total']:.2f} s.")
    if result.metas.get("lora"):
        lines.append("LoRA: " + ", ".join(f"{a['name']} x{a['scale']:g}" for a in result.metas["lora"]))
    lm_line = lm_summary(result.metas)
    if lm_line:
        lines.append(lm_line)
    # How the request was read (e.g. a turbo model's fixed steps): logged at INFO, which is hidden.
    lines += [f"Note: {note}" for note in result.warnings]
    if args.demo:
        lines += [DEMO_NOTICE, "For music, get the real weights (once) and run the same job on them:"]
        lines += [f"  {command}" for command in real_weight_commands(result.model, args, demo_source)]
    return lines


def real_weight_commands(model: str, args: argparse.Namespace, demo_source: bool) -> list[str]:
    """The download and the ``acestep generate`` that repeat this demo job on real weights."""
    from acestep.checkpoints.download import SEPARATE_REPOS
    from acestep.checkpoints.layout import DEFAULT_DIT

    # The main repo (turbo DiT, VAE, text encoder, LM); a separate model fetches it first.
    fetch = f"-m {model} " if model in SEPARATE_REPOS else ""
    commands = [f"acestep-download {fetch}--dir {REAL_ROOT}"]
    generate = ["acestep", "generate", "--checkpoint", REAL_ROOT]
    if model != DEFAULT_DIT:
        generate += ["--dit", model]
    if args.task_type != "text2music":
        generate += ["--task", args.task_type]
    for flag, value in (("--track-name", args.track_name), ("--track-classes", args.track_classes)):
        if value:
            generate += [flag, value]
    if args.src_audio:
        generate += ["--src-audio", YOUR_SOURCE if demo_source else args.src_audio]
    elif args.audio_duration > 0:
        generate += ["--duration", f"{args.audio_duration:g}"]
    if args.caption:
        generate += ["--caption", args.caption]
    if args.seed is not None:
        generate += ["--seed", str(args.seed)]
    return [*commands, shlex.join(generate)]
