"""``acestep`` without a subcommand: the Gradio UI (upstream's flags), optionally with the REST API."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from acestep.cli.lora import _lora_dir_flag, apply_lora_dir
from acestep.cli.server import _server_app
from acestep.serving.listen import serve


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
    p.add_argument(
        "--api-port",
        type=int,
        default=None,
        help="with --enable-api, also serve on this port (the Docker images: UI 7860, API 8001)",
    )
    p.add_argument("--auth-username", default=None)
    p.add_argument("--auth-password", default=None)
    p.add_argument("--api-key", default=None, help="protects the REST API and the UI (password)")
    p.add_argument("--keep-alive", default=None)
    _lora_dir_flag(p)


def run_ui(args: argparse.Namespace) -> int:
    """The Gradio UI, with the REST API on the same server and port when --enable-api."""
    if args.api_port and not args.enable_api:
        print("error: --api-port needs --enable-api (the REST API on a second port)", file=sys.stderr)
        return 2
    try:
        import gradio as gr

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
    if args.init_llm is not None:
        os.environ["ACESTEP_INIT_LLM"] = "true" if args.init_llm else "false"
    if args.lm_model_path:
        os.environ["ACESTEP_LM_MODEL_PATH"] = args.lm_model_path
    apply_lora_dir(args)
    if args.backend and args.backend.strip().lower() != "pt":
        print(f"note: the 5Hz LM runs with transformers (pt) here, not {args.backend}", file=sys.stderr)
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
    ports = [config.port] + ([args.api_port] if args.api_port and args.api_port != config.port else [])
    serve(app, config.host, ports)
    return 0
