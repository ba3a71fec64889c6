#!/usr/bin/env bash
# Create .venv (once) with torch first, then acestep in editable mode with the dev tools.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# torch first, pinned, so that no dependency resolves another multi-GB torch build.
"$VENV/bin/python" -m pip install -q torch==2.14.1 torchaudio==2.11.0
"$VENV/bin/python" -m pip install -q -e ".[dev]"
