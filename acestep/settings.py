"""Settings read from the environment (upstream's ``ACESTEP_*`` names)."""

from __future__ import annotations

import os
from pathlib import Path


def checkpoints_dir() -> Path:
    """``ACESTEP_CHECKPOINTS_DIR``, else ``$ACESTEP_PROJECT_ROOT/checkpoints``, else ``./checkpoints``."""
    explicit = os.environ.get("ACESTEP_CHECKPOINTS_DIR")
    if explicit:
        return Path(explicit).expanduser()
    root = os.environ.get("ACESTEP_PROJECT_ROOT")
    return (Path(root).expanduser() if root else Path.cwd()) / "checkpoints"


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
