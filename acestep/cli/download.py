"""``acestep-download``: fetch ACE-Step 1.5 checkpoints into a checkpoints root."""

from __future__ import annotations

import argparse
import sys

from acestep import settings


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
