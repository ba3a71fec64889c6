"""``acestep-download``: fetch ACE-Step 1.5 checkpoints into a checkpoints root."""

from __future__ import annotations

import argparse
import os
import sys

from acestep import settings


def download_main(argv: list[str] | None = None) -> int:
    from acestep.checkpoints.download import KNOWN_MODELS, download

    parser = argparse.ArgumentParser(prog="acestep-download", description="download ACE-Step 1.5 checkpoints")
    parser.add_argument("--model", default="main", help=f"one of: {', '.join(KNOWN_MODELS)}")
    parser.add_argument("--dir", default=str(settings.checkpoints_dir()), help="checkpoints root")
    parser.add_argument("--token", default=None, help="Hugging Face token")
    parser.add_argument("--list", action="store_true", help="list the known models and exit")
    parser.add_argument(
        "--missing",
        action="store_true",
        help="fetch only what the server's settings need and the root lacks (ACESTEP_CONFIG_PATH, "
        "ACESTEP_INIT_LLM, ACESTEP_LM_MODEL_PATH): the Docker images' first start",
    )
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(KNOWN_MODELS))
        return 0
    if args.missing:
        return _download_missing(args.dir, args.token)
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


def _download_missing(root: str, token: str | None) -> int:
    from acestep.checkpoints.download import KNOWN_MODELS, download, missing_models

    try:
        with_lm = settings.parse_bool_setting("ACESTEP_INIT_LLM", os.environ.get("ACESTEP_INIT_LLM")) is True
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    lm = os.environ.get("ACESTEP_LM_MODEL_PATH") or None
    models = missing_models(root, settings.dit_name(), lm, with_lm)
    if not models:
        print(f"all models are in {root}")
        return 0
    unknown = [m for m in models if m not in KNOWN_MODELS]
    if unknown:
        print(
            f"error: {', '.join(unknown)} missing from {root} and not downloadable "
            f"(known: {', '.join(KNOWN_MODELS)}); put the folder there yourself",
            file=sys.stderr,
        )
        return 2
    for model in models:
        print(f"downloading {model} into {root} ...", flush=True)
        try:
            download(model, root, token)
        except Exception as exc:  # network and hub errors: say what failed, no traceback
            print(f"error: download of {model!r} failed: {exc}", file=sys.stderr)
            return 1
    return 0
