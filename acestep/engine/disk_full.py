"""A full disk, named: ENOSPC (or a full quota) becomes one error that says which directory is full.

Writers catch it to remove what they had half written; faces show its message as it is (a failed
job, a 507 for a synchronous upload) instead of libsndfile's "System error.".
"""

from __future__ import annotations

import errno
from pathlib import Path

NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class NoSpaceError(OSError):
    """No space left in ``directory``; whatever was being written there has been removed."""

    def __init__(self, directory: str | Path):
        super().__init__(errno.ENOSPC, f"no space left in {directory}")
        self.directory = Path(directory)

    def __str__(self) -> str:
        return self.strerror


def is_no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS
