"""The server's log: no local variables in tracebacks, no secret in any line.

loguru's default handler prints every local variable of a failed frame (``diagnose``), which puts
the server's config, its API key included, into the log of any unexpected error. The server logs
through one handler without that, and masks the values of ``SECRET_SETTINGS`` in whatever it writes.
"""

from __future__ import annotations

import os
import sys

from loguru import logger

from acestep.settings import SECRET_SETTINGS
from acestep.settings import current as current_settings

MASK = "***"
MIN_MASKED = 4


def configure_server_logs(secrets: list[str | None] = ()) -> None:
    """One stderr handler at INFO, without diagnose; the given secrets and ``SECRET_SETTINGS``'
    values are replaced by ``***``. Child processes inherit ``LOGURU_DIAGNOSE=NO``."""
    values = [*secrets, *(current_settings().get(name) for name in SECRET_SETTINGS)]
    # Longest first, so a secret that contains another is masked whole. A value of a few characters
    # is no secret worth masking, and masking it would garble every line.
    hidden = sorted({v for v in values if v and len(v) >= MIN_MASKED}, key=len, reverse=True)

    def write(message: str) -> None:
        for secret in hidden:
            message = message.replace(secret, MASK)
        sys.stderr.write(message)

    os.environ["LOGURU_DIAGNOSE"] = "NO"
    logger.remove()
    logger.add(write, level="INFO", diagnose=False, backtrace=False, colorize=False)
