"""``acestep-download``: fetch ACE-Step 1.5 checkpoints into a checkpoints root.

Upstream's flags (``-m``, ``-a``, ``-l``, ``-d``, ``-f``, ``-t``, ``--skip-main``) with upstream's
behaviour: no model = the main repo; a separate repo fetches the main repo first when it is missing;
a model already complete is skipped unless ``--force``; exit 1 on an unknown model or a failure.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from acestep import settings
from acestep.cli.version import add_version_flag

SOURCES = ("auto", "huggingface", "modelscope")


def add_download_source_flag(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """Upstream's ``--download-source`` (acestep-download, acestep, acestep-api): accepted so that
    existing scripts keep working; downloads always come from Hugging Face."""
    parser.add_argument(
        "--download-source",
        default=default,
        type=str.lower,
        choices=SOURCES,
        help="accepted for upstream's scripts; downloads always come from Hugging Face "
        "(set HF_ENDPOINT to use a mirror)",
    )


EPILOG = """examples:
  acestep-download                           the main repo: turbo DiT, VAE, text encoder, 1.7B LM
  acestep-download -m acestep-v15-base       the base DiT (lego, extract, complete), main repo first
  acestep-download -m acestep-v15-xl-turbo   the 4B XL turbo DiT (about 20 GB; GPU over 12 GiB)
  acestep-download --all                     every model in --list
  acestep-download --list                    what exists, and what is already in --dir"""


def _download_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="acestep-download",
        description="Download ACE-Step 1.5 checkpoints from Hugging Face into a checkpoints root.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-m",
        "--model",
        default=None,
        metavar="NAME",
        help="the model to fetch: main (the default) or a name from --list, e.g. acestep-v15-base",
    )
    parser.add_argument("-a", "--all", action="store_true", help="fetch every model --list shows")
    parser.add_argument(
        "-l", "--list", action="store_true", help="list the known models, which are in --dir and their size"
    )
    parser.add_argument(
        "-d",
        "--dir",
        default=str(settings.checkpoints_dir()),
        help="checkpoints root (default: ACESTEP_CHECKPOINTS_DIR, else checkpoints/ under "
        "ACESTEP_PROJECT_ROOT or the current folder)",
    )
    parser.add_argument(
        "-f", "--force", action="store_true", help="download again even when the model is complete"
    )
    parser.add_argument(
        "-t", "--token", default=None, help="Hugging Face token (default: HF_TOKEN or the saved login)"
    )
    parser.add_argument(
        "--skip-main", action="store_true", help="do not fetch the main repo before a separate model"
    )
    add_download_source_flag(parser, default="auto")
    parser.add_argument(
        "--missing",
        action="store_true",
        help="fetch only what the server's settings need and the root lacks (ACESTEP_CONFIG_PATH, "
        "ACESTEP_INIT_LLM, ACESTEP_LM_MODEL_PATH): the Docker images' first start",
    )
    add_version_flag(parser)
    return parser


def download_main(argv: list[str] | None = None) -> int:
    from acestep.checkpoints.registry import KNOWN_MODELS, MAIN, MAIN_REPO_FOLDERS, SEPARATE_REPOS

    args = _download_parser().parse_args(argv)
    root = Path(args.dir).expanduser()
    if args.list:
        print(model_table(root))
        return 0
    if args.download_source == "modelscope":
        print("note: ModelScope is not supported; downloading from Hugging Face", file=sys.stderr)
    if args.missing:
        return _download_missing(args.dir, args.token)
    # (model, fetch again even when complete): --force applies to what was asked for, never to
    # the main repo fetched first as a prerequisite (upstream fetches that only when missing).
    if args.all:
        plan = [(model, args.force) for model in (MAIN, *SEPARATE_REPOS)]
    else:
        model = args.model or MAIN
        if model not in KNOWN_MODELS:
            print(f"error: unknown model {model!r}; see: acestep-download --list", file=sys.stderr)
            return 1
        separate = model not in (MAIN, *MAIN_REPO_FOLDERS)
        plan = ([(MAIN, False)] if separate and not args.skip_main else []) + [(model, args.force)]
    print(f"checkpoints root: {root}")
    failed = []
    for model, force in plan:
        if not _fetch(model, root, args.token, force):
            failed.append(model)
            if not args.all:  # the model asked for needs its prerequisite: stop at the first failure
                break
    if failed:
        print(f"error: not downloaded: {', '.join(failed)}", file=sys.stderr)
        return 1
    if not args.all:
        print(_next_step(plan[-1][0], root))
    return 0


def _fetch(model: str, root: Path, token: str | None, force: bool) -> bool:
    """Download ``model`` unless it is complete (or ``force``); False after a failure (reported)."""
    from acestep.checkpoints.download import download, presence
    from acestep.checkpoints.registry import repo_for

    if not force and presence(root, model).complete:
        print(f"{model}: already complete")
        return True
    repo_id, folder = repo_for(model)
    print(f"{model}: downloading {repo_id} into {root / folder if folder else root} ...", flush=True)
    try:
        download(model, root, token, force=force)
    except Exception as exc:  # network and hub errors: say what failed, no traceback
        print(f"error: download of {model!r} failed: {exc}", file=sys.stderr)
        return False
    return True


def _next_step(model: str, root: Path) -> str:
    """How to use what is now in ``root``: the README's first command with this root filled in."""
    from acestep.checkpoints.layout import DIT_PREFIX
    from acestep.checkpoints.lm_folders import LM_PREFIX

    use = f" --dit {model}" if model.startswith(DIT_PREFIX) else ""
    use += f" --lm {model} --thinking" if model.startswith(LM_PREFIX) else ""
    caption = "--caption 'warm lo-fi piano' --duration 30"
    return f"try: acestep generate --checkpoint {shlex.quote(str(root))}{use} {caption}"


def model_table(root: Path) -> str:
    """Every known model: name, repo, what it is, and whether ``root`` holds it (complete, partial)."""
    from acestep.checkpoints.download import presence
    from acestep.checkpoints.registry import KNOWN_MODELS, repo_for

    lines = [f"models known to acestep-download; present = complete in {root}"]
    width = max(map(len, KNOWN_MODELS))
    repo_width = max(len(repo_for(model)[0]) for model in KNOWN_MODELS)
    for model in KNOWN_MODELS:
        state = presence(root, model)
        where = "present" if state.complete else "partial" if state.started else "-"
        size = _human(state.size_bytes) if state.started else ""
        repo = repo_for(model)[0]
        lines.append(f"{model:<{width}}  {where:<7}  {size:>8}  {repo:<{repo_width}}  {_what(model)}")
    return "\n".join(lines)


def _what(model: str) -> str:
    """A few words on a model; a DiT's tasks come from its variant, as the engine will enforce them."""
    from acestep.checkpoints.layout import DIT_PREFIX, TEXT_ENCODER_DIR, VAE_DIR
    from acestep.checkpoints.lm_folders import LM_PREFIX
    from acestep.checkpoints.registry import MAIN, MAIN_REPO_FOLDERS
    from acestep.checkpoints.variants import detect_variant

    if model == MAIN:
        return "the main repo: " + ", ".join(MAIN_REPO_FOLDERS)
    if model.startswith(DIT_PREFIX):
        variant = detect_variant({}, model)
        tasks = ", ".join(sorted(variant.supported_tasks))
        needs = " (4B; a GPU over 12 GiB, see docs/memory.md)" if variant.is_xl else ""
        return f"{variant.size} {variant.name} DiT{needs}: {tasks}"
    if model.startswith(LM_PREFIX):
        return f"5 Hz LM {model.removeprefix(LM_PREFIX)} (thinking, metadata, audio codes)"
    return {VAE_DIR: "VAE (audio <-> latents)", TEXT_ENCODER_DIR: "text encoder"}.get(model, "")


def _human(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _download_missing(root: str, token: str | None) -> int:
    from acestep.checkpoints.download import download, missing_models
    from acestep.checkpoints.registry import KNOWN_MODELS

    try:
        init_llm = settings.current().get("ACESTEP_INIT_LLM")
        with_lm = settings.parse_bool_setting("ACESTEP_INIT_LLM", init_llm) is True
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    lm = settings.current().get("ACESTEP_LM_MODEL_PATH") or None
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
