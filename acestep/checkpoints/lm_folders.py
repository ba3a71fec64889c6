"""Where the 5 Hz LM folder is: an explicit path or name, ``ACESTEP_LM_MODEL_PATH``, or the first
``acestep-5Hz-lm-*`` in the checkpoints root. Torch-free, so the server can answer without a worker."""

from __future__ import annotations

from pathlib import Path

from acestep.checkpoints.registry import KNOWN_MODELS, download_command
from acestep.settings import current as current_settings
from acestep.settings import value as setting_value

LM_PREFIX = "acestep-5Hz-lm-"
DEFAULT_LM = f"{LM_PREFIX}1.7B"  # the LM in the main repo


class LmNotAvailable(ValueError):
    """A request needs the LM, and none is configured or found; the message says how to add one."""


def find_lm_folder(
    root: Path, lm: str | Path | None = None, env: dict[str, str] | None = None
) -> Path | None:
    """The LM folder: ``lm`` (a path or a folder name under ``root``), else ``ACESTEP_LM_MODEL_PATH``,
    else the alphabetically first ``acestep-5Hz-lm-*`` under ``root`` (upstream's UI default)."""
    env = current_settings() if env is None else env
    wanted = lm if lm not in (None, "") else setting_value(env, "ACESTEP_LM_MODEL_PATH")
    if wanted is not None:
        direct = Path(wanted).expanduser()
        for candidate in (direct, root / str(wanted)):
            if (candidate / "config.json").is_file():
                return candidate
        present = sorted(p.name for p in root.glob(f"{LM_PREFIX}*")) if root.is_dir() else []
        model = str(wanted) if str(wanted) in KNOWN_MODELS else DEFAULT_LM
        raise LmNotAvailable(
            f"LM {wanted} not found (looked for {direct} and {root / str(wanted)}); "
            f"LM folders under {root}: {', '.join(present) or 'none'}; "
            f"download {'it' if model == str(wanted) else 'one'} with: {download_command(model, root)}"
        )
    found = (
        sorted(p for p in root.glob(f"{LM_PREFIX}*") if (p / "config.json").is_file())
        if root.is_dir()
        else []
    )
    return found[0] if found else None


def lm_availability(root: Path, env: dict[str, str] | None = None) -> tuple[str | None, str]:
    """(the LM folder name a worker on ``root`` will use, or None; and if None, why and how to fix)."""
    try:
        folder = find_lm_folder(root, env=env)
    except LmNotAvailable as exc:
        return None, str(exc)
    if folder is None:
        return (
            None,
            f"no {LM_PREFIX}* folder in {root}; download one with: {download_command(DEFAULT_LM, root)}",
        )
    return folder.name, ""
