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
# The browser tests drive Debian's Chromium (no browser download by Playwright).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ]; then
    apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null
  else
    echo "note: install Debian's chromium for the browser tests (apt-get install chromium)" >&2
  fi
fi
