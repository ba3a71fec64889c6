"""LoRA on the command line: ``--lora``/``--lora-scale`` for ``acestep generate``, ``--lora-dir``
for every command that serves, and ``acestep loras`` to list the adapters the folder holds."""

from __future__ import annotations

import argparse
import json
import os
import sys

from acestep.settings import reload as reload_settings


def _lora_dir_flag(p) -> None:
    p.add_argument(
        "--lora-dir", default=None, help="folder of LoRA adapters (ACESTEP_LORA_DIR; default ./loras)"
    )


def _lora_flags(p) -> None:
    g = p.add_argument_group("LoRA", "adapters from the LoRA folder, by name (see `acestep loras`)")
    g.add_argument("--lora", action="append", default=None, help="an adapter name; repeat to combine")
    g.add_argument(
        "--lora-scale",
        action="append",
        type=float,
        default=None,
        help="its scale, 0-4 (default 1); one for all adapters, or one per --lora",
    )
    _lora_dir_flag(g)


def apply_lora_dir(args: argparse.Namespace) -> None:
    """``--lora-dir`` as the setting the engine and the servers read."""
    if getattr(args, "lora_dir", None):
        os.environ["ACESTEP_LORA_DIR"] = args.lora_dir
    reload_settings()  # the callers wrote their flags into the environment just before


def lora_fields(args: argparse.Namespace) -> dict:
    fields: dict = {}
    if args.lora:
        fields["lora"] = args.lora
    if args.lora_scale:
        fields["lora_scale"] = args.lora_scale
    return fields


def _loras_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("loras", help="list the LoRA adapters in the LoRA folder")
    _lora_dir_flag(p)
    p.add_argument("--json", action="store_true", help="print the adapters and the unusable files as JSON")


def run_loras(args: argparse.Namespace) -> int:
    from acestep.lora.catalog import lora_dir, scan

    apply_lora_dir(args)
    folder = lora_dir()
    found, problems = scan(folder)
    if args.json:
        entries = [info.as_dict() for info in found.values()]
        print(json.dumps({"directory": str(folder), "loras": entries, "problems": problems}, indent=2))
        return 0
    if not found and not problems:
        print(f"no LoRA adapters in {folder}")
    for info in found.values():
        base = info.base_variant or "unknown base"
        shape = f"rank {info.rank}  alpha {info.alpha:g}  {info.modules} layers"
        print(f"{info.name}  {info.format}  {base}  {shape}")
    for entry, why in problems.items():
        print(f"unusable: {entry}: {why}", file=sys.stderr)
    return 0
