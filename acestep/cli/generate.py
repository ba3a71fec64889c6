"""``acestep generate``: one generation job from the command line, run in this process."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from acestep import settings
from acestep.cli.demo import DEMO_NOTICE, _demo_inputs
from acestep.cli.lm_options import _lm_flags, lm_fields, resolve_lm
from acestep.cli.lora import _lora_flags, apply_lora_dir, lora_fields
from acestep.cli.memory_flags import (
    LM_SWITCH_FLAGS,
    MEMORY_FLAGS,
    _memory_flags,
    _memory_manager,
    device_flags,
)
from acestep.cli.output_file import move_to_output, resolve_format
from acestep.cli.progress import StageBar, diffusion_steps, progress_wanted
from acestep.cli.quiet import configure_logs, silence_third_party
from acestep.cli.summary import summary_lines
from acestep.fields import GENERATION
from acestep.fields.sampling_table import EDITS, SAMPLER

DEFAULT_OUTPUT_DIR = "outputs"

# The request fields with a flag, in the help's order: the field table's (acestep.fields).
REQUEST_ARGS = tuple(spec.target for spec in GENERATION if spec.flag and spec.target)


def _generate_parser(sub: argparse._SubParsersAction) -> None:

    p = sub.add_parser(
        "generate",
        help="generate audio from the command line",
        description="Generate audio in this process. -o FILE names the file; with --batch-size N the "
        "others go to FILE's name with -2 ... -N added (song.wav, song-2.wav, ...).",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="checkpoints root, DiT folder or diffusers folder")
    src.add_argument(
        "--demo", action="store_true", help="use a built-in tiny random model (no weights, no network)"
    )
    p.add_argument(
        "--dit", default=None, help="DiT folder name in the root (default: ACESTEP_CONFIG_PATH or turbo)"
    )
    sampler = p.add_argument_group("sampler", "how the diffusion steps run")
    edits = p.add_argument_group("edits", "cover, repaint, lego and flow-edit options")
    groups = {spec.name: sampler for spec in SAMPLER} | {spec.name: edits for spec in EDITS}
    for spec in GENERATION:
        if spec.flag is not None:
            groups.get(spec.name, p).add_argument(*spec.flag.names, dest=spec.target, **spec.flag.options)
    p.add_argument(
        "-o",
        "--output",
        default=None,
        metavar="FILE",
        help="write the audio to FILE (with --batch-size N also FILE-2 ... FILE-N, before the extension)",
    )
    p.add_argument(
        "--output-dir",
        default=None,
        help="without -o: the folder for the files, named by their content hash (default: outputs)",
    )
    device_flags(p)
    _memory_flags(p)
    p.add_argument(
        "--keep-alive",
        default=None,
        help="after the job: 0 frees the model and prints the measured unload (with --json); "
        "a duration or -1 keeps it until the process exits",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar (stage and step) on stderr (default: only when stderr is a terminal)",
    )
    p.add_argument("--verbose", action="store_true", help="also print acestep's info log lines on stderr")
    _lm_flags(p)
    _lora_flags(p)


class _Stop(Exception):
    """``acestep generate`` ends early: an exit code and the lines it prints on stderr."""

    def __init__(self, code: int, *lines: str):
        super().__init__(*lines)
        self.code, self.lines = code, lines


@dataclass
class _Job:
    """What the checks settled on, for the run."""

    request: object  # GenerationRequest (imported lazily: argument checks do not load pydantic)
    checkpoint: str
    output_dir: Path
    demo_source: bool
    paths: object  # CheckpointPaths
    lm_folder: Path | None
    manager: object  # MemoryManager
    keep_alive: float | None


def run_generate(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    configure_logs(args.verbose)
    try:
        job = _check_inputs(args)
        result, reports = _run(args, job)
    except _Stop as stop:
        for line in stop.lines:
            print(f"error: {line}", file=sys.stderr)
        return stop.code
    if args.output:
        move_to_output(result, args.output)
    if args.json:
        print(json.dumps(result.model_dump(mode="json") | {"memory_reports": reports}, indent=2))
        if args.demo:
            print(DEMO_NOTICE, file=sys.stderr)  # stdout stays JSON; the warning is said once, here
    else:
        print("\n".join(summary_lines(result, args, time.perf_counter() - started, job.demo_source)))
    return 0


def _check_inputs(args: argparse.Namespace) -> _Job:
    """Every refusal before a weight loads: flags, the request, the checkpoint and LM, the task,
    keep-alive, the tier's limits and the adapters."""
    from pydantic import ValidationError

    from acestep.errors import validation_lines
    from acestep.request import GenerationRequest

    if args.output and args.output_dir:
        raise _Stop(2, "-o names the file and --output-dir the folder; give one of them")
    try:
        args.audio_format = resolve_format(args.output, args.audio_format)
    except ValueError as exc:
        raise _Stop(2, str(exc)) from None
    output_dir = Path(args.output).parent if args.output else Path(args.output_dir or DEFAULT_OUTPUT_DIR)
    demo_source = False
    if args.demo:
        silence_third_party()  # building the demo checkpoint saves models (transformers' bars)
        own_source = args.src_audio
        checkpoint = _demo_inputs(args)
        demo_source = own_source is None and args.src_audio is not None
    else:
        checkpoint = args.checkpoint or str(settings.checkpoints_dir())
    fields = {name: getattr(args, name) for name in REQUEST_ARGS if getattr(args, name) is not None}
    fields |= lm_fields(args) | lora_fields(args)
    apply_lora_dir(args)
    if args.seed is not None:
        fields["use_random_seed"] = False
    try:
        request = GenerationRequest(**fields)
    except ValidationError as exc:
        raise _Stop(2, *validation_lines(exc.errors())) from None
    from acestep.checkpoints import CheckpointError, resolve
    from acestep.checkpoints.lm_folders import LmNotAvailable
    from acestep.checkpoints.task_support import require_task
    from acestep.lora.catalog import find, lora_dir
    from acestep.memory.keep_alive import KeepAliveError, parse_keep_alive
    from acestep.memory.limits import MemoryLimitError

    try:
        paths = resolve(checkpoint, args.dit or settings.dit_name())
        # A missing LM is a missing checkpoint: refused here, before the DiT loads.
        lm_folder = resolve_lm(paths.root, args.lm, request.uses_lm)
    except (CheckpointError, LmNotAvailable) as exc:
        raise _Stop(1, str(exc)) from None
    try:
        require_task(paths, request.effective_task)  # e.g. lego on turbo: refused before weights load
        keep_alive = parse_keep_alive(args.keep_alive) if args.keep_alive is not None else None
        if args.inference_steps is None:
            request = request.model_copy(update={"inference_steps": paths.variant.default_steps})
        manager = _memory_manager(args, MEMORY_FLAGS | LM_SWITCH_FLAGS)
        manager.lm_name = lm_folder.name if lm_folder is not None else None
        manager.validate(request)  # tier limits (the LM switch too): refused before anything is loaded
        find(lora_dir(), request.lora or [], paths.variant.tag)  # the adapters, by their headers
    except (KeepAliveError, ValueError) as exc:
        lm_off = isinstance(exc, MemoryLimitError) and exc.limit == "lm_enabled"
        hint = " (on the command line: --init-llm)" if lm_off else ""
        raise _Stop(2, f"{exc}{hint}") from None
    return _Job(request, checkpoint, output_dir, demo_source, paths, lm_folder, manager, keep_alive)


def _run(args: argparse.Namespace, job: _Job):
    """Load the model in this process, run the one job with a progress bar, give memory back."""
    from acestep.worker.runner import EngineSpec
    from acestep.worker.supervisor import Supervisor

    silence_third_party()
    spec = EngineSpec(
        job.checkpoint,
        dit=args.dit or settings.dit_name(),
        device=args.device,
        dtype=args.dtype,
        lm=str(job.lm_folder.resolve()) if job.lm_folder is not None else None,
    )
    wanted = progress_wanted(args.progress, sys.stderr)
    bar = StageBar(diffusion_steps(job.paths.variant, job.request)) if wanted else None
    supervisor = Supervisor(job.manager)
    try:
        supervisor.start(spec, in_process=True)
        done = supervisor.submit(job.request, job.output_dir, on_progress=[bar] if bar else None).wait()
        if job.keep_alive == 0:
            supervisor.unload("free")
    except (ValueError, RuntimeError) as exc:
        supervisor.close()
        raise _Stop(1, str(exc)) from None
    finally:
        if bar is not None:
            bar.close()
    reports = list(job.manager.reports)
    supervisor.close()
    if done.state != "succeeded":
        raise _Stop(1, str(done.error))
    return done.result, reports
