"""Console scripts: ``acestep`` (``acestep generate``), ``acestep-api``, ``acestep-download``,
``acestep-worker``.

``main`` dispatches ``acestep``'s subcommands; each command lives in its own module, and every name
this package had as a single module is still importable from here.
"""

from __future__ import annotations

import argparse

from acestep.cli.api import _api_parser as _api_parser
from acestep.cli.api import api_main
from acestep.cli.dataset import _dataset_parser, run_dataset
from acestep.cli.demo import DEMO_NOTICE
from acestep.cli.demo import _demo_inputs as _demo_inputs
from acestep.cli.download import download_main
from acestep.cli.generate import REQUEST_ARGS, run_generate
from acestep.cli.generate import _generate_parser as _generate_parser
from acestep.cli.lora import _loras_parser, run_loras
from acestep.cli.memory import _memory_parser as _memory_parser
from acestep.cli.memory import run_memory
from acestep.cli.memory_flags import MEMORY_FLAGS
from acestep.cli.memory_flags import _bool_flag as _bool_flag
from acestep.cli.memory_flags import _memory_env as _memory_env
from acestep.cli.memory_flags import _memory_flags as _memory_flags
from acestep.cli.memory_flags import _memory_manager as _memory_manager
from acestep.cli.server import _server_app as _server_app
from acestep.cli.train import _train_parser, run_train
from acestep.cli.ui import _bool_string as _bool_string
from acestep.cli.ui import _ui_flags as _ui_flags
from acestep.cli.ui import run_ui
from acestep.cli.version import add_version_flag
from acestep.cli.worker import worker_main

__all__ = [
    "DEMO_NOTICE",
    "MEMORY_FLAGS",
    "REQUEST_ARGS",
    "api_main",
    "download_main",
    "main",
    "run_generate",
    "run_memory",
    "run_ui",
    "worker_main",
]


def _main_parser() -> argparse.ArgumentParser:
    """``acestep``: the UI's flags, and the subcommands (each with its own ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="acestep",
        description="ACE-Step 1.5 music generation: the Gradio UI, or a subcommand "
        "(acestep generate --help, acestep memory --help, acestep loras --help, acestep dataset --help).",
    )
    add_version_flag(parser)
    _ui_flags(parser)
    sub = parser.add_subparsers(dest="command", title="subcommands")
    _generate_parser(sub)
    _memory_parser(sub)
    _loras_parser(sub)
    _dataset_parser(sub)
    _train_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _main_parser().parse_args(argv)
    if args.command == "generate":
        return run_generate(args)
    if args.command == "loras":
        return run_loras(args)
    if args.command == "memory":
        return run_memory(args)
    if args.command == "dataset":
        return run_dataset(args)
    if args.command == "train":
        return run_train(args)
    return run_ui(args)
