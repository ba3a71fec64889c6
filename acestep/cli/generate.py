"""``acestep generate``: one generation job from the command line, run in this process."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from acestep import settings
from acestep.cli.demo import DEMO_NOTICE, _demo_inputs
from acestep.cli.lm_options import _lm_flags, lm_fields, lm_summary, resolve_lm
from acestep.cli.lora import _lora_flags, apply_lora_dir, lora_fields
from acestep.cli.memory_flags import LM_SWITCH_FLAGS, MEMORY_FLAGS, _memory_flags, _memory_manager

REQUEST_ARGS = (
    "task_type",
    "caption",
    "lyrics",
    "instrumental",
    "track_name",
    "track_classes",
    "src_audio",
    "reference_audio",
    "audio_code_string",
    "audio_duration",
    "bpm",
    "key_scale",
    "time_signature",
    "vocal_language",
    "inference_steps",
    "guidance_scale",
    "shift",
    "seed",
    "batch_size",
    "repainting_start",
    "repainting_end",
    "audio_cover_strength",
    "audio_format",
)


def _generate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate audio from the command line")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="checkpoints root, DiT folder or diffusers folder")
    src.add_argument(
        "--demo", action="store_true", help="use a built-in tiny random model (no weights, no network)"
    )
    p.add_argument(
        "--dit", default=None, help="DiT folder name in the root (default: ACESTEP_CONFIG_PATH or turbo)"
    )
    p.add_argument("--task", default="text2music", dest="task_type")
    p.add_argument("--caption", "--prompt", default="", dest="caption")
    p.add_argument("--lyrics", default="")
    p.add_argument("--instrumental", action="store_true")
    p.add_argument("--track-name", default=None)
    p.add_argument("--track-classes", default=None, help="comma-separated, for complete")
    p.add_argument("--src-audio", default=None)
    p.add_argument("--reference-audio", default=None)
    p.add_argument("--audio-codes", default="", dest="audio_code_string")
    p.add_argument("--duration", type=float, default=-1.0, dest="audio_duration")
    p.add_argument("--bpm", type=int, default=None)
    p.add_argument("--key-scale", default="")
    p.add_argument("--time-signature", default="")
    p.add_argument("--language", default="unknown", dest="vocal_language")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        dest="inference_steps",
        help="diffusion steps (default: the model's own: 8 for turbo, 50 for base and SFT)",
    )
    p.add_argument("--guidance-scale", type=float, default=None)
    p.add_argument("--shift", type=float, default=None)
    p.add_argument("--seed", default=None, help="an integer or a comma list; omitted = random")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--repainting-start", type=float, default=None)
    p.add_argument("--repainting-end", type=float, default=None)
    p.add_argument("--cover-strength", type=float, default=None, dest="audio_cover_strength")
    p.add_argument("--format", default="wav", dest="audio_format", help="wav, wav32, flac or mp3")
    p.add_argument("--output-dir", default="outputs")
    p.add_argument("--device", default=settings.device(), help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default=None)
    _memory_flags(p)
    p.add_argument(
        "--keep-alive",
        default=None,
        help="after the job: 0 frees the model and prints the measured unload (with --json); "
        "a duration or -1 keeps it until the process exits",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _lm_flags(p)
    _lora_flags(p)


def run_generate(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from acestep.engine.request import GenerationRequest

    if args.demo:
        print(DEMO_NOTICE, file=sys.stderr)
        checkpoint = _demo_inputs(args)
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
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]) or "request"
            print(f"error: {where}: {error['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        return 2
    from acestep.checkpoints import CheckpointError, resolve
    from acestep.checkpoints.lm_folders import LmNotAvailable
    from acestep.lora.catalog import find, lora_dir, tag_of
    from acestep.memory.keep_alive import KeepAliveError, parse_keep_alive
    from acestep.memory.limits import MemoryLimitError

    try:
        paths = resolve(checkpoint, args.dit or settings.dit_name())
        # A missing LM is a missing checkpoint: refused here, before the DiT loads.
        lm_folder = resolve_lm(paths.root, args.lm, request.uses_lm)
    except (CheckpointError, LmNotAvailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        keep_alive = parse_keep_alive(args.keep_alive) if args.keep_alive is not None else None
        if args.inference_steps is None:
            request = request.model_copy(update={"inference_steps": paths.variant.default_steps})
        manager = _memory_manager(args, MEMORY_FLAGS | LM_SWITCH_FLAGS)
        manager.lm_name = lm_folder.name if lm_folder is not None else None
        manager.validate(request)  # tier limits (the LM switch too): refused before anything is loaded
        find(lora_dir(), request.lora or [], tag_of(paths.variant))  # the adapters, by their headers
    except (KeepAliveError, ValueError) as exc:
        lm_off = isinstance(exc, MemoryLimitError) and exc.limit == "lm_enabled"
        hint = " (on the command line: --init-llm)" if lm_off else ""
        print(f"error: {exc}{hint}", file=sys.stderr)
        return 2
    from acestep.worker.runner import EngineSpec

    spec = EngineSpec(
        checkpoint,
        dit=args.dit or settings.dit_name(),
        device=args.device,
        dtype=args.dtype,
        lm=str(lm_folder.resolve()) if lm_folder is not None else None,
    )
    try:
        manager.start(spec, in_process=True)
        job = manager.submit(request, Path(args.output_dir)).wait()
        if keep_alive == 0:
            manager.unload("free")
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        manager.close()
        return 1
    reports = list(manager.reports)
    manager.close()
    if job.state != "succeeded":
        print(f"error: {job.error}", file=sys.stderr)
        return 1
    result = job.result
    if args.json:
        print(json.dumps(result.model_dump(mode="json") | {"memory_reports": reports}, indent=2))
    else:
        for item in result.items:
            print(f"{item.path}  seed={item.seed}  {item.duration:.2f} s  {item.sample_rate} Hz")
        print(f"{result.task_type} on {result.model} ({result.variant}) in {result.timings['total']:.2f} s")
        if result.metas.get("lora"):
            print("LoRA: " + ", ".join(f"{a['name']} x{a['scale']:g}" for a in result.metas["lora"]))
        summary = lm_summary(result.metas)
        if summary:
            print(summary)
    if args.demo:
        print(DEMO_NOTICE, file=sys.stderr)
    return 0
