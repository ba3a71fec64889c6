"""Settings read from the environment (upstream's ``ACESTEP_*`` names)."""

from __future__ import annotations

import os
from pathlib import Path

# Settings that hold secrets: never passed to the GPU worker process, never written to a log.
SECRET_SETTINGS = ("ACESTEP_API_KEY", "ACESTEP_QUEUE_URL")


def _project_folder(env, variable: str, name: str) -> Path:
    """``$variable``, else ``$ACESTEP_PROJECT_ROOT/<name>``, else ``./<name>``."""
    explicit = env.get(variable)
    if explicit:
        return Path(explicit).expanduser()
    root = env.get("ACESTEP_PROJECT_ROOT")
    return (Path(root).expanduser() if root else Path.cwd()) / name


def checkpoints_dir() -> Path:
    """``ACESTEP_CHECKPOINTS_DIR``, else ``$ACESTEP_PROJECT_ROOT/checkpoints``, else ``./checkpoints``."""
    return _project_folder(os.environ, "ACESTEP_CHECKPOINTS_DIR", "checkpoints")


def lora_dir(env=None) -> Path:
    """``ACESTEP_LORA_DIR``, else ``$ACESTEP_PROJECT_ROOT/loras``, else ``./loras``."""
    return _project_folder(os.environ if env is None else env, "ACESTEP_LORA_DIR", "loras")


def dit_name() -> str | None:
    """``ACESTEP_CONFIG_PATH`` names the DiT folder (e.g. ``acestep-v15-base``)."""
    return os.environ.get("ACESTEP_CONFIG_PATH") or None


def device() -> str:
    return os.environ.get("ACESTEP_DEVICE", "auto")


def cache_dir() -> Path:
    base = (
        os.environ.get("ACESTEP_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    )
    return Path(base).expanduser() / "acestep"


TRUE_WORDS = frozenset({"1", "true", "yes", "y", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "n", "off"})


def parse_bool_setting(name: str, value: str | None) -> bool | None:
    """Upstream's truthy words; empty or ``auto`` = None (keep the default)."""
    if value is None or value.strip().lower() in ("", "auto"):
        return None
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"{name} must be true/false/auto, got {value!r}")


def env_int(env, name: str, default: int, minimum: int = 0) -> int:
    """An integer setting: unset or blank = ``default``; anything else must parse and be >= minimum."""
    value = (env.get(name) or "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {number}")
    return number
