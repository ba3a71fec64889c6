#!/usr/bin/env bash
# Create .venv (once) with torch first, then acestep in editable mode with the dev tools.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# torch first, pinned, so that no dependency resolves another multi-GB torch build.
"$VENV/bin/python" -m pip install -q torch==2.14.1
"$VENV/bin/python" -m pip install -q -e ".[dev]"
# Debian packages the tests use: Chromium for the browser tests (no browser download by
# Playwright), docker-compose to validate docker/compose.yaml (it needs no Docker engine for that),
# redis-server for the cluster tests (each test starts its own on a free loopback port).
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = "0" ]; then
    apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null
  else
    echo "note: install Debian's ${missing[*]} for the tests (apt-get install ${missing[*]})" >&2
  fi
fi
