"""``acestep`` without a subcommand: the Gradio UI (upstream's flags), optionally with the REST API."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from acestep.cli.download import add_download_source_flag
from acestep.cli.lora import _lora_dir_flag, apply_lora_dir
from acestep.cli.memory_flags import BOOL_CHOICES, bool_word
from acestep.cli.server import _server_app
from acestep.serving.params import LM_BACKENDS
from acestep.settings import current as current_settings
from acestep.settings import parse_bool_setting
from acestep.ui.i18n import LANGUAGES as UI_LANGUAGES
from acestep.ui.i18n import page_script


def _bool_string(value: str | None) -> bool | None:
    """A bool-string flag's word (``True``, ``false``, ``1``, ``auto``...) as True, False or None."""
    return parse_bool_setting("flag", value)


def _bool_string_flag(p: argparse.ArgumentParser, *names: str, help_text: str) -> None:
    """Upstream's ``--flag True|False`` options; the word is read by ``_bool_string`` in ``run_ui``."""
    p.add_argument(
        *names,
        type=bool_word,
        choices=BOOL_CHOICES,
        default=None,
        metavar="BOOL",
        dest=names[0].lstrip("-").replace("-", "_"),
        help=f"{help_text} (%(metavar)s: %(choices)s)",
    )


def _ui_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=7860, help="the port to serve on (default %(default)s)")
    p.add_argument(
        "--server-name",
        "--server_name",
        default="127.0.0.1",
        dest="server_name",
        help="the address to listen on (default %(default)s; beyond loopback needs --api-key)",
    )
    p.add_argument("--share", action="store_true", help="accepted; sharing links need the internet")
    p.add_argument("--debug", action="store_true", help="accepted for upstream compatibility")
    p.add_argument(
        "--language", default="en", choices=UI_LANGUAGES, help="the UI's language (default %(default)s)"
    )
    p.add_argument(
        "--allowed-path",
        action="append",
        default=[],
        dest="allowed_path",
        metavar="PATH",
        help="a folder whose audio the UI may read as input; repeat for more",
    )
    _bool_string_flag(
        p, "--init_service", "--init-service", help_text="load the model at start, not on the first job"
    )
    _bool_string_flag(p, "--service_mode", help_text="as --init_service (upstream's service mode)")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoints root, DiT folder or diffusers folder (default: ACESTEP_CHECKPOINTS_DIR)",
    )
    p.add_argument(
        "--config_path",
        "--config-path",
        default=None,
        dest="config_path",
        help="DiT folder name in the root (default: ACESTEP_CONFIG_PATH or turbo)",
    )
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps (ACESTEP_DEVICE)")
    _bool_string_flag(p, "--init_llm", help_text="allow the 5Hz LM (ACESTEP_INIT_LLM)")
    p.add_argument("--lm_model_path", default=None, help="LM folder name or path (ACESTEP_LM_MODEL_PATH)")
    p.add_argument(
        "--backend",
        default=None,
        type=str.lower,
        choices=LM_BACKENDS,
        help="the LM backend upstream would use; the LM runs on pt (transformers) here",
    )
    _bool_string_flag(
        p, "--use_flash_attention", help_text="accepted for upstream compatibility (see ACESTEP_ATTENTION)"
    )
    _bool_string_flag(
        p, "--offload_to_cpu", help_text="keep the text encoder and VAE in CPU RAM between uses"
    )
    _bool_string_flag(p, "--offload_dit_to_cpu", help_text="also the DiT (with --offload_to_cpu)")
    add_download_source_flag(p)
    p.add_argument("--enable-api", action="store_true", help="serve the REST API on the same port")
    p.add_argument(
        "--api-port",
        type=int,
        default=None,
        help="with --enable-api, also serve on this port (the Docker images: UI 7860, API 8001)",
    )
    p.add_argument("--auth-username", default=None, help="the UI's user name (with --auth-password)")
    p.add_argument("--auth-password", default=None, help="the UI's password (with --auth-username)")
    p.add_argument("--api-key", default=None, help="protects the REST API and the UI (password)")
    p.add_argument(
        "--keep-alive",
        default=None,
        help="idle time before the model unloads: seconds, 5m, 0 (after every job) or -1 (never); "
        "ACESTEP_KEEP_ALIVE",
    )
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
        "ACESTEP_OFFLOAD_TO_CPU": _bool_string(args.offload_to_cpu),
        "ACESTEP_OFFLOAD_DIT_TO_CPU": _bool_string(args.offload_dit_to_cpu),
        "ACESTEP_INIT_LLM": _bool_string(args.init_llm),
    }
    for name, value in overrides.items():
        if value is not None:
            os.environ[name] = "true" if value else "false"
    if args.device:
        os.environ["ACESTEP_DEVICE"] = args.device
    if args.keep_alive is not None:
        os.environ["ACESTEP_KEEP_ALIVE"] = args.keep_alive
    if args.lm_model_path:
        os.environ["ACESTEP_LM_MODEL_PATH"] = args.lm_model_path
    apply_lora_dir(args)
    if args.backend and args.backend != "pt":
        print(f"note: the 5Hz LM runs with transformers (pt) here, not {args.backend}", file=sys.stderr)
    if args.share:
        print("warning: --share needs the internet; serving locally only", file=sys.stderr)
    key = args.api_key or current_settings().get("ACESTEP_API_KEY") or None
    built = _server_app(
        dict(host=args.server_name, port=args.port, api_key=key, dit=args.config_path),
        args.checkpoint,
        include_api=args.enable_api,
        allowed=[Path(p) for p in args.allowed_path],
        preload=bool(_bool_string(args.init_service) or _bool_string(args.service_mode)),
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
        app,
        blocks,
        path="/",
        auth=auth,
        allowed_paths=[str(config.results_dir)],
        footer_links=[],
        max_file_size=config.max_upload_bytes,
        js=page_script(args.language),  # the page's lang and direction (right-to-left: he, fa)
    )
    # Gradio checks that a file input was uploaded through its upload route only once the app has
    # "launched", which mounting never sets: without this, an API payload naming any server path
    # (/etc/passwd, /dev/zero) would be read as an input (tests/test_security_gradio.py).
    blocks.has_launched = True
    from acestep.serving.listen import serve  # uvicorn: the api extra, needed only to serve

    ports = [config.port] + ([args.api_port] if args.api_port and args.api_port != config.port else [])
    # Gradio ends its pages' heartbeat streams when its app's stop_event is set (its own launch
    # sets it in close()); mounted, nothing would, and SIGTERM would wait for every open tab.
    mounted = [getattr(route, "app", None) for route in app.routes]
    stops = [sub.stop_event.set for sub in mounted if isinstance(sub, gr.routes.App)]
    serve(app, config, ports, on_stop=stops)
    return 0
