"""The server app behind ``acestep`` (UI) and ``acestep-api``, or an exit code saying why not."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path


def _server_app(
    overrides: dict,
    checkpoint: str | None,
    include_api: bool = True,
    allowed: Iterable[Path] = (),
    preload: bool = False,
):
    """The server's config and app, or an exit code after printing why (2: unsafe bind, 1: bad
    checkpoint or setting)."""
    from acestep import settings
    from acestep.checkpoints import CheckpointError
    from acestep.serving.app import create_app
    from acestep.serving.config import ServerConfig, UnsafeBindError

    try:
        # Read once, after .env and the flags are in the environment; the config carries it down.
        config = ServerConfig.from_env(settings.reload(), **overrides)
        if checkpoint:
            config.checkpoint = checkpoint
        config.allowed_paths += list(allowed)
        config.preload = preload
        config.check_bind()
        from acestep.serving.log_setup import configure_server_logs

        configure_server_logs([config.api_key])
        return config, create_app(config, include_api=include_api)
    except UnsafeBindError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
