"""``--version`` for every console script, from the one version string of the package."""

from __future__ import annotations

import argparse


def add_version_flag(parser: argparse.ArgumentParser) -> None:
    """``PROG --version`` prints ``PROG <version>`` and exits 0, before any checkpoint is read."""
    from acestep import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
