"""Console scripts: ``acestep`` (``acestep generate``), ``acestep-api``, ``acestep-download``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from acestep import settings

DEMO_NOTICE = (
    "DEMO MODE: a tiny model with RANDOM weights was used. It exercises the whole pipeline, but the "
    "audio it writes is noise, not music. Use --checkpoint with real ACE-Step weights for music."
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


def _bool_flag(p: argparse.ArgumentParser, name: str, help_text: str) -> None:
    p.add_argument(name, nargs="?", const="true", default=None, metavar="BOOL", help=help_text)


def _memory_flags(p: argparse.ArgumentParser) -> None:
    """The memory settings as flags (each overrides its ACESTEP_* variable for this run)."""
    _bool_flag(p, "--offload-to-cpu", "keep the text encoder and VAE in CPU RAM between uses")
    _bool_flag(p, "--offload-dit-to-cpu", "also the DiT (only with --offload-to-cpu)")
    p.add_argument("--gpu-device", default=None, help="auto (least memory in use), or a GPU index")
    p.add_argument("--max-cuda-vram", default=None, help="behave as a GPU of this many GiB (a real cap)")
    p.add_argument("--max-duration", default=None, help="override the tier's maximum seconds")
    p.add_argument("--max-batch-size", default=None, help="override the tier's maximum batch")


MEMORY_FLAGS = {
    "offload_to_cpu": "ACESTEP_OFFLOAD_TO_CPU",
    "offload_dit_to_cpu": "ACESTEP_OFFLOAD_DIT_TO_CPU",
    "gpu_device": "ACESTEP_GPU_DEVICE",
    "max_cuda_vram": "MAX_CUDA_VRAM",
    "max_duration": "ACESTEP_MAX_DURATION",
    "max_batch_size": "ACESTEP_MAX_BATCH_SIZE",
}


def _memory_env(args: argparse.Namespace) -> dict[str, str]:
    import os

    env = dict(os.environ)
    for attr, variable in MEMORY_FLAGS.items():
        value = getattr(args, attr, None)
        if value is not None:
            env[variable] = str(value)
    device = (getattr(args, "device", None) or "auto").strip().lower()
    if device != "auto":
        kind, _, index = device.partition(":")
        env["ACESTEP_DEVICE"] = kind
        if index:
            env["ACESTEP_GPU_DEVICE"] = index
    return env


def _memory_manager(args: argparse.Namespace):
    """A manager for this process (which runs the models itself, so torch may read the GPUs)."""
    from acestep.memory.devices import LocalTorchSource
    from acestep.memory.manager import MemoryManager

    return MemoryManager(source=LocalTorchSource(), env=_memory_env(args))


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


def _demo_inputs(args: argparse.Namespace) -> str:
    """Build (once) the tiny demo checkpoint, and a synthetic source if the task needs one."""
    import soundfile as sf

    from acestep.engine.tasks import SOURCE_TASKS
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


def run_generate(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from acestep.engine.request import GenerationRequest

    if args.demo:
        print(DEMO_NOTICE, file=sys.stderr)
        checkpoint = _demo_inputs(args)
    else:
        checkpoint = args.checkpoint or str(settings.checkpoints_dir())
    fields = {name: getattr(args, name) for name in REQUEST_ARGS if getattr(args, name) is not None}
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
    from acestep.memory.keep_alive import KeepAliveError, parse_keep_alive

    try:
        paths = resolve(checkpoint, args.dit or settings.dit_name())
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        keep_alive = parse_keep_alive(args.keep_alive) if args.keep_alive is not None else None
        if args.inference_steps is None:
            request = request.model_copy(update={"inference_steps": paths.variant.default_steps})
        manager = _memory_manager(args)
        manager.validate(request)  # tier limits: a clear refusal before anything is loaded
    except (KeepAliveError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from acestep.worker.runner import EngineSpec

    spec = EngineSpec(checkpoint, dit=args.dit or settings.dit_name(), device=args.device, dtype=args.dtype)
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
    if args.demo:
        print(DEMO_NOTICE, file=sys.stderr)
    return 0


def _memory_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("memory", help="show the GPU, tier, limits and offload plan (loads nothing)")
    p.add_argument("--device", default=settings.device())
    _memory_flags(p)
    p.add_argument("--json", action="store_true")


def run_memory(args: argparse.Namespace) -> int:
    try:
        manager = _memory_manager(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(manager.get_status(), indent=2))
    else:
        print(manager.banner())
    return 0


def _bool_string(value: str) -> bool:
    """Upstream's bool-string flags: true iff true, 1 or yes."""
    return value.strip().lower() in ("true", "1", "yes")


def _ui_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--server-name", "--server_name", default="127.0.0.1", dest="server_name")
    p.add_argument("--share", action="store_true", help="accepted; sharing links need the internet")
    p.add_argument("--debug", action="store_true")
    p.add_argument("--language", default="en", choices=("en", "pt", "nl", "zh"))
    p.add_argument("--allowed-path", action="append", default=[], dest="allowed_path")
    p.add_argument("--init_service", "--init-service", type=_bool_string, default=False, dest="init_service")
    p.add_argument("--service_mode", type=_bool_string, default=False)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--config_path", "--config-path", default=None, dest="config_path")
    p.add_argument("--device", default=None)
    p.add_argument("--init_llm", type=_bool_string, default=None)
    p.add_argument("--lm_model_path", default=None)
    p.add_argument("--backend", default=None)
    p.add_argument("--use_flash_attention", type=_bool_string, default=None)
    p.add_argument("--offload_to_cpu", type=_bool_string, default=None)
    p.add_argument("--offload_dit_to_cpu", type=_bool_string, default=None)
    p.add_argument("--download-source", default=None)
    p.add_argument("--enable-api", action="store_true", help="serve the REST API on the same port")
    p.add_argument("--auth-username", default=None)
    p.add_argument("--auth-password", default=None)
    p.add_argument("--api-key", default=None, help="protects the REST API and the UI (password)")
    p.add_argument("--keep-alive", default=None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="acestep", description="ACE-Step 1.5 music generation (Gradio UI)")
    _ui_flags(parser)
    sub = parser.add_subparsers(dest="command")
    _generate_parser(sub)
    _memory_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "generate":
        return run_generate(args)
    if args.command == "memory":
        return run_memory(args)
    return run_ui(args)


def run_ui(args: argparse.Namespace) -> int:
    """The Gradio UI, with the REST API on the same server and port when --enable-api."""
    import os

    try:
        import gradio as gr
        import uvicorn

        from acestep.serving.config import prepare_environment
        from acestep.ui.app import build_ui
    except ImportError as exc:
        print(f"error: the UI needs the ui extra (pip install 'acestep[ui]'): {exc}", file=sys.stderr)
        return 2
    from acestep.serving.auth import keys_match

    prepare_environment()
    overrides = {
        "ACESTEP_OFFLOAD_TO_CPU": args.offload_to_cpu,
        "ACESTEP_OFFLOAD_DIT_TO_CPU": args.offload_dit_to_cpu,
    }
    for name, value in overrides.items():
        if value is not None:
            os.environ[name] = "true" if value else "false"
    if args.device:
        os.environ["ACESTEP_DEVICE"] = args.device
    if args.keep_alive is not None:
        os.environ["ACESTEP_KEEP_ALIVE"] = args.keep_alive
    if args.init_llm or args.lm_model_path:
        print("warning: the 5Hz LM is not part of this version; serving the DiT alone", file=sys.stderr)
    if args.share:
        print("warning: --share needs the internet; serving locally only", file=sys.stderr)
    key = args.api_key or os.environ.get("ACESTEP_API_KEY") or None
    built = _server_app(
        dict(host=args.server_name, port=args.port, api_key=key, dit=args.config_path),
        args.checkpoint,
        include_api=args.enable_api,
        allowed=[Path(p) for p in args.allowed_path],
        preload=bool(args.init_service or args.service_mode),
    )
    if isinstance(built, int):
        return built
    config, app = built
    if args.auth_username and args.auth_password:
        auth = (args.auth_username, args.auth_password)
    elif key:
        auth = lambda username, password: keys_match(password, key)  # noqa: E731 - any user, the key
    else:
        auth = None
    blocks = build_ui(app.state, args.language)
    app = gr.mount_gradio_app(
        app, blocks, path="/", auth=auth, allowed_paths=[str(config.results_dir)], footer_links=[]
    )
    uvicorn.run(app, host=config.host, port=config.port, log_level="info")
    return 0


def _api_parser() -> argparse.ArgumentParser:

    p = argparse.ArgumentParser(prog="acestep-api", description="ACE-Step 1.5 REST API (upstream-compatible)")
    p.add_argument("--host", default=None, help="default: ACESTEP_API_HOST or 127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="default: ACESTEP_API_PORT or 8001")
    p.add_argument("--api-key", default=None, help="require this key (Bearer header or ai_token)")
    p.add_argument("--checkpoint", default=None, help="checkpoints root (default: ACESTEP_CHECKPOINTS_DIR)")
    p.add_argument("--config-path", "--dit", default=None, dest="dit", help="DiT folder name")
    p.add_argument("--download-source", default=None, help="accepted for upstream compatibility")
    p.add_argument("--init-llm", action="store_true", help="accepted; the 5Hz LM is not in this version")
    p.add_argument("--lm-model-path", default=None, help="accepted; the 5Hz LM is not in this version")
    p.add_argument("--keep-alive", default=None, help="server default keep-alive (ACESTEP_KEEP_ALIVE)")
    p.add_argument("--device", default=None, help="auto, cpu or cuda (ACESTEP_DEVICE)")
    _memory_flags(p)
    return p


def api_main(argv: list[str] | None = None) -> int:
    import os

    args = _api_parser().parse_args(argv)
    try:
        import fastapi  # noqa: F401 - the api extra is what this command needs
        import uvicorn
    except ImportError as exc:
        print(
            f"error: the REST server needs the api extra (pip install 'acestep[api]'): {exc}", file=sys.stderr
        )
        return 2
    from acestep.serving.config import prepare_environment

    prepare_environment()
    if args.download_source and args.download_source != "auto":
        os.environ["ACESTEP_DOWNLOAD_SOURCE"] = args.download_source
    # The memory manager and the worker process read these settings from the environment.
    os.environ.update({k: v for k, v in _memory_env(args).items() if k.startswith(("ACESTEP_", "MAX_CUDA"))})
    if args.keep_alive is not None:
        os.environ["ACESTEP_KEEP_ALIVE"] = args.keep_alive
    if args.api_key:
        os.environ["ACESTEP_API_KEY"] = args.api_key
    if args.init_llm or args.lm_model_path:
        print("warning: the 5Hz LM is not part of this version; serving the DiT alone", file=sys.stderr)
    built = _server_app(
        dict(host=args.host, port=args.port, api_key=args.api_key, dit=args.dit), args.checkpoint
    )
    if isinstance(built, int):
        return built
    config, app = built
    uvicorn.run(app, host=config.host, port=config.port, log_level="info")
    return 0


def _server_app(overrides: dict, checkpoint: str | None, include_api: bool = True, allowed=(), preload=False):
    """The server's config and app, or an exit code after printing why (2: unsafe bind, 1: bad
    checkpoint or setting)."""
    from acestep.checkpoints import CheckpointError
    from acestep.serving.app import create_app
    from acestep.serving.config import ServerConfig, UnsafeBindError

    try:
        config = ServerConfig.from_env(**overrides)
        if checkpoint:
            config.checkpoint = checkpoint
        config.allowed_paths += list(allowed)
        config.preload = preload
        config.check_bind()
        return config, create_app(config, include_api=include_api)
    except UnsafeBindError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def download_main(argv: list[str] | None = None) -> int:
    from acestep.checkpoints.download import KNOWN_MODELS, download

    parser = argparse.ArgumentParser(prog="acestep-download", description="download ACE-Step 1.5 checkpoints")
    parser.add_argument("--model", default="main", help=f"one of: {', '.join(KNOWN_MODELS)}")
    parser.add_argument("--dir", default=str(settings.checkpoints_dir()), help="checkpoints root")
    parser.add_argument("--token", default=None, help="Hugging Face token")
    parser.add_argument("--list", action="store_true", help="list the known models and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(KNOWN_MODELS))
        return 0
    try:
        path = download(args.model, args.dir, args.token)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # network and hub errors: say what failed, no traceback
        print(f"error: download of {args.model!r} failed: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
