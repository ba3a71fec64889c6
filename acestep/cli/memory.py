"""``acestep memory``: the GPU, tier, limits and offload plan, without loading anything."""

from __future__ import annotations

import argparse
import json
import sys

from acestep import settings
from acestep.cli.memory_flags import (
    LM_SWITCH_FLAGS,
    MEMORY_FLAGS,
    _lm_switch_flag,
    _memory_flags,
    _memory_manager,
)


def _memory_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("memory", help="show the GPU, tier, limits and offload plan (loads nothing)")
    p.add_argument(
        "--device", default=settings.device(), help="auto, cpu, cuda, cuda:N or mps (default: ACESTEP_DEVICE)"
    )
    _memory_flags(p)
    _lm_switch_flag(p)
    p.add_argument("--json", action="store_true", help="print the status as JSON")


def run_memory(args: argparse.Namespace) -> int:
    try:
        manager = _memory_manager(args, MEMORY_FLAGS | LM_SWITCH_FLAGS)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(manager.get_status(), indent=2))
    else:
        print(manager.banner())
    return 0
