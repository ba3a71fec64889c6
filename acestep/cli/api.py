"""``acestep-api``: the upstream-compatible REST server."""

from __future__ import annotations

import argparse
import os
import sys

from acestep.cli.download import add_download_source_flag
from acestep.cli.lora import _lora_dir_flag, apply_lora_dir
from acestep.cli.memory_flags import _memory_env, _memory_flags
from acestep.cli.server import _server_app
from acestep.cli.version import add_version_flag


def _api_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="acestep-api", description="ACE-Step 1.5 REST API (upstream-compatible)")
    add_version_flag(p)
    p.add_argument("--host", default=None, help="default: ACESTEP_API_HOST or 127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="default: ACESTEP_API_PORT or 8001")
    p.add_argument("--api-key", default=None, help="require this key (Bearer header or ai_token)")
    p.add_argument("--checkpoint", default=None, help="checkpoints root (default: ACESTEP_CHECKPOINTS_DIR)")
    p.add_argument("--config-path", "--dit", default=None, dest="dit", help="DiT folder name")
    add_download_source_flag(p)
    p.add_argument("--init-llm", action="store_true", help="allow the 5Hz LM (ACESTEP_INIT_LLM=true)")
    p.add_argument("--lm-model-path", default=None, help="LM folder name or path (ACESTEP_LM_MODEL_PATH)")
    p.add_argument("--keep-alive", default=None, help="server default keep-alive (ACESTEP_KEEP_ALIVE)")
    p.add_argument("--device", default=None, help="auto, cpu or cuda (ACESTEP_DEVICE)")
    _lora_dir_flag(p)
    _memory_flags(p)
    return p


def api_main(argv: list[str] | None = None) -> int:
    args = _api_parser().parse_args(argv)
    try:
        import fastapi  # noqa: F401 - the api extra is what this command needs
        import uvicorn  # noqa: F401
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
    if args.init_llm:
        os.environ["ACESTEP_INIT_LLM"] = "true"
    if args.lm_model_path:
        os.environ["ACESTEP_LM_MODEL_PATH"] = args.lm_model_path
    apply_lora_dir(args)  # also reads the settings again, with the flags above in force
    built = _server_app(
        dict(host=args.host, port=args.port, api_key=args.api_key, dit=args.dit), args.checkpoint
    )
    if isinstance(built, int):
        return built
    config, app = built
    from acestep.serving.listen import serve

    serve(app, config)
    return 0
