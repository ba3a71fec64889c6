"""The 5Hz LM on ``acestep generate``: its flags, the request fields they set, which LM folder runs,
and the one summary line of what the LM settled on."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from acestep.cli.memory_flags import _lm_switch_flag
from acestep.fields import LM_FEATURES, LM_KNOBS

# Request fields that take a flag's value as it is (sample_mode is derived, see lm_fields): the
# field table's LM entries with a flag (acestep.fields), in the help's order.
LM_FLAG_FIELDS = tuple(spec for spec in (*LM_FEATURES, *LM_KNOBS) if spec.flag and spec.target)
LM_REQUEST_ARGS = tuple(spec.target for spec in LM_FLAG_FIELDS)
LM_ENV = "ACESTEP_LM_MODEL_PATH"
CODE_TOKEN = re.compile(r"<\|audio_code_\d+\|>")


def _lm_flags(p: argparse.ArgumentParser) -> None:
    """The LM flags. Every default is None so that only what the user set reaches the request,
    whose own defaults (upstream's) stay the single source of truth."""
    g = p.add_argument_group("5Hz LM", "the LM runs only with --thinking, --sample-query or --use-format")
    for spec in LM_FLAG_FIELDS:
        g.add_argument(*spec.flag.names, dest=spec.target, **spec.flag.options)
    g.add_argument(
        "--lm",
        default=None,
        metavar="PATH_OR_NAME",
        help=f"LM folder, or its name in the checkpoints root (default: {LM_ENV}, "
        "else the first acestep-5Hz-lm-* there)",
    )
    _lm_switch_flag(g)


def lm_fields(args: argparse.Namespace) -> dict:
    """The request fields the LM flags set; a sample query switches sample mode on."""
    fields = {name: getattr(args, name) for name in LM_REQUEST_ARGS if getattr(args, name, None) is not None}
    if str(fields.get("sample_query", "")).strip():
        fields["sample_mode"] = True
    return fields


def resolve_lm(root: Path, lm: str | None, needed: bool) -> Path | None:
    """The LM folder this run will load, found before anything loads; ``LmNotAvailable`` (a
    ValueError) says how to get one when ``--lm`` names nothing or a needed LM is missing."""
    from acestep.checkpoints.lm_folders import LM_PREFIX, LmNotAvailable, find_lm_folder

    if lm is None and not needed:
        return None
    folder = find_lm_folder(root, lm)
    if folder is None and needed:
        raise LmNotAvailable(
            f"--thinking, --sample-query and --use-format need the 5Hz LM, and no {LM_PREFIX}* folder "
            f"is in {root}; download one with: acestep-download --model {LM_PREFIX}1.7B --dir {root} "
            f"(or pass --lm PATH, or set {LM_ENV})"
        )
    return folder


def lm_summary(metas: dict) -> str | None:
    """One line on what the LM settled on, or None when it did not run."""
    if not metas.get("lm_model"):
        return None
    codes = metas.get("audio_codes")
    counts = ", ".join(str(len(CODE_TOKEN.findall(c))) for c in codes) if codes else "none"
    duration = metas.get("duration")
    seconds = f"{duration:.2f} s" if isinstance(duration, int | float) else "-"
    return (
        f"LM {metas['lm_model']}: bpm {metas.get('bpm') or '-'}, key {metas.get('key_scale') or '-'}, "
        f"time signature {metas.get('time_signature') or '-'}, duration {seconds}; "
        f"audio codes per item: {counts}"
    )
